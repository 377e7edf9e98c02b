"""From a validated email to a queue message: the lane from the policy, the key, the time.

Every intake (HTTP API, :class:`emailq.deployment.Deployment`, CLI, demo) goes through
:func:`to_new_message`, so the same email lands in the same lane whichever way it came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from emailq.broker import NewMessage
from emailq.message import Email
from emailq.policy import DEFAULT_POLICY, Placement, Policy, place


@dataclass(frozen=True, slots=True)
class Queued:
    """An accepted email: its id, and the lane the policy gave it (every intake answers
    with this: the HTTP API's 202 body, the clients, Deployment.send)."""

    id: str
    lane: str


def placement_of(email: Email, now: datetime, policy: Policy = DEFAULT_POLICY) -> Placement:
    wedding = email.wedding
    return place(
        wedding.kind if wedding else None,
        wedding.ceremony_at if wedding else None,
        now,
        email.priority,
        policy,
    )


def to_new_message(
    email: Email, now: datetime | None = None, policy: Policy = DEFAULT_POLICY
) -> NewMessage:
    at = now or datetime.now(UTC)
    return NewMessage(
        email.to_payload(),
        lane=placement_of(email, at, policy).lane,
        tenant=email.tenant,
        idempotency_key=email.idempotency_key,
        send_at=email.send_at.timestamp() if email.send_at else None,
        expires_at=email.expires_at.timestamp() if email.expires_at else None,
        max_attempts=email.max_attempts,
        validated=True,
    )
