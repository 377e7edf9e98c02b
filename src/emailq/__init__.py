"""emailq: a durable, priority-aware outbound email queue.

Start from a :class:`Deployment` (``Deployment.from_url("sqlite:///emailq.db")``): it
validates, places and queues email, and answers status and health questions.
"""

from emailq.broker import Broker, Job, NewMessage, State, open_broker
from emailq.deployment import Deployment, Health
from emailq.errors import BrokerFull, BrokerUnavailable, EmailqError, InvalidEmail
from emailq.intake import Queued
from emailq.lanes import Lane
from emailq.settings import Settings

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
