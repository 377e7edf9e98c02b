"""Delivery providers behind one interface: rendered messages in, one result each out."""

from emailq.providers.base import (
    OPEN_GATE,
    Accepted,
    HealthCheck,
    Permanent,
    Provider,
    Rendered,
    SendGate,
    SendResult,
    Transient,
    Withheld,
)

__all__ = [
    "OPEN_GATE",
    "Accepted",
    "HealthCheck",
    "Permanent",
    "Provider",
    "Rendered",
    "SendGate",
    "SendResult",
    "Transient",
    "Withheld",
]
