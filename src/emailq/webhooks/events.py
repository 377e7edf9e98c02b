"""Webhook events made from audit events: which kinds are told, their stable ids, bodies.

The body follows the Standard Webhooks shape ``{"type", "timestamp", "data"}``. An event's
id is derived from what it reports (the message, the audit kind and its instant; a batch
and its size), so the same event read twice gets the same id and receivers deduplicate
by the ``webhook-id`` header.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from emailq.broker.base import FeedEvent
from emailq.privacy.audit import Kind

TYPE_OF = {
    Kind.SENT: "email.sent",
    Kind.RETRIED: "email.failed",  # failed for now: retried later
    Kind.DEAD: "email.dead",
    Kind.CANCELLED: "email.cancelled",
}
FINAL_KINDS = (Kind.SENT, Kind.DEAD, Kind.CANCELLED)
# What of an audit event's detail a receiver is told (never a worker's name or a hash).
_TOLD = ("error", "due", "attempt")


def event_id(*parts: object) -> str:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"evt_{digest[:32]}"


def email_event(fed: FeedEvent) -> tuple[str, str, str] | None:
    """``(event id, type, body)`` for an audit event webhooks tell, else None."""
    kind = TYPE_OF.get(fed.event.kind)
    if kind is None:
        return None
    audit = fed.event
    data: dict[str, Any] = {"id": audit.message_id, "batch_id": fed.batch_id}
    data |= {name: audit.detail[name] for name in _TOLD if name in audit.detail}
    identity = event_id(audit.message_id, audit.kind.value, repr(audit.at))
    return identity, kind, body(kind, audit.at, data)


def batch_completed(batch_id: str, at: float, summary: dict[str, Any]) -> tuple[str, str, str]:
    """One per batch and size: a batch retried and complete again is told again."""
    data = {"batch_id": batch_id, **summary}
    return (
        event_id(batch_id, "completed", summary["total"] + summary["retried"]),
        ("batch.completed"),
        body("batch.completed", at, data),
    )


def body(kind: str, at: float, data: dict[str, Any]) -> str:
    timestamp = datetime.fromtimestamp(at, UTC).isoformat()
    return json.dumps({"type": kind, "timestamp": timestamp, "data": data}, separators=(",", ":"))
