"""Queue backends behind one contract; pick one by URL with :func:`open_broker`."""

from __future__ import annotations

from urllib.parse import urlsplit

from emailq.broker.base import (
    Action,
    BatchMember,
    Broker,
    BrokerOptions,
    Job,
    MessageInfo,
    NewMessage,
    Outcome,
    State,
    Stats,
)
from emailq.clock import Clock
from emailq.errors import ConfigurationError

DEFAULT_URL = "sqlite:///emailq.db"

__all__ = [
    "DEFAULT_URL",
    "Action",
    "BatchMember",
    "Broker",
    "BrokerOptions",
    "Job",
    "MessageInfo",
    "NewMessage",
    "Outcome",
    "State",
    "Stats",
    "open_broker",
]


def open_broker(
    url: str = DEFAULT_URL, options: BrokerOptions | None = None, clock: Clock | None = None
) -> Broker:
    """Open the backend a URL names; backends are imported only when chosen.

    Without ``clock`` the broker keeps its own time (Redis ``TIME``; SQLite the local
    clock); a clock given replaces it (tests inject a ``ManualClock``).

    ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``redis://host:port/db``,
    ``rediss://…`` (TLS) and ``redis+sentinel://host:port[,host:port]/service_name``.
    A ``?prefix=name`` query on a Redis URL keeps several queues apart on one server.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from emailq.broker.sqlite import SQLiteBroker

        return SQLiteBroker.from_url(url, options=options, clock=clock)
    if scheme in ("redis", "rediss", "unix", "redis+sentinel"):
        from emailq.broker.redis import RedisBroker

        return RedisBroker.from_url(url, options=options, clock=clock)
    raise ConfigurationError(
        f"unknown broker URL scheme {scheme!r}: use sqlite:///path.db or redis://host:port/db"
    )
