"""emailq: a durable, priority-aware outbound email queue.

Start from a :class:`Deployment` (``Deployment.from_url("sqlite:///emailq.db")``): it
validates, places and queues email, and answers status and health questions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emailq.broker import Broker, Job, NewMessage, State, open_broker
    from emailq.deployment import Deployment, Health
    from emailq.errors import BrokerFull, BrokerUnavailable, EmailqError, InvalidEmail
    from emailq.intake import Queued
    from emailq.lanes import Lane
    from emailq.settings import Settings

# Imported on first use (PEP 562): a worker process imports `emailq.<its modules>` and so
# this package first; loading the whole library here (the deployment, intake, privacy…)
# would cost every worker start and every supervisor its memory.
_HOME = {
    "Broker": "emailq.broker",
    "Job": "emailq.broker",
    "NewMessage": "emailq.broker",
    "State": "emailq.broker",
    "open_broker": "emailq.broker",
    "Deployment": "emailq.deployment",
    "Health": "emailq.deployment",
    "BrokerFull": "emailq.errors",
    "BrokerUnavailable": "emailq.errors",
    "EmailqError": "emailq.errors",
    "InvalidEmail": "emailq.errors",
    "Queued": "emailq.intake",
    "Lane": "emailq.lanes",
    "Settings": "emailq.settings",
}

__all__ = [
    "Broker",
    "BrokerFull",
    "BrokerUnavailable",
    "Deployment",
    "EmailqError",
    "Health",
    "InvalidEmail",
    "Job",
    "Lane",
    "NewMessage",
    "Queued",
    "Settings",
    "State",
    "open_broker",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'emailq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
