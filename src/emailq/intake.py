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
from emailq.privacy.erasure import RecipientHasher, addresses_of


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


def placement_reason(email: Email, placement: Placement, now: datetime) -> str:
    """Why the policy chose the lane, in a few words for the audit trail."""
    if email.priority is not None:
        return f"explicit priority {email.priority}"
    wedding = email.wedding
    if wedding is None:
        return "no wedding context"
    hours = (wedding.ceremony_at - now).total_seconds() / 3600
    return f"kind {wedding.kind.value}, ceremony in {hours:.1f} h"


def to_new_message(
    email: Email,
    now: datetime | None = None,
    policy: Policy = DEFAULT_POLICY,
    *,
    hasher: RecipientHasher | None = None,
    key_id: str | None = None,
) -> NewMessage:
    """``hasher``: index the message by its addresses' keyed hashes (erasure, the audit
    trail); ``key_id``: the API key it came with, for the trail."""
    at = now or datetime.now(UTC)
    placement = placement_of(email, at, policy)
    origin = {"reason": placement_reason(email, placement, at)}
    if key_id is not None:
        origin["key"] = key_id
    return NewMessage(
        email.to_payload(),
        recipient_hashes=hasher.hashes(addresses_of(email)) if hasher else (),
        origin=origin,
        lane=placement.lane,
        tenant=email.tenant,
        idempotency_key=email.idempotency_key,
        send_at=email.send_at.timestamp() if email.send_at else None,
        expires_at=email.expires_at.timestamp() if email.expires_at else None,
        max_attempts=email.max_attempts,
        ceremony_at=email.wedding.ceremony_at.timestamp() if email.wedding else None,
        validated=True,
    )
