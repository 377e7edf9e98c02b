"""The audit trail: append-only events per message, written by the broker call that
changes the message's state (never a round trip of their own).

An event is ``(message_id, at, kind, detail)``; ``detail`` is a small JSON object whose
fields depend on the kind (a lease names its worker, an attempt its provider and reply).
No event ever holds an address or a body: recipients appear only as keyed hashes
(:mod:`emailq.privacy.erasure`), so the trail outlives an erasure and stays provable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emailq.broker.base import Outcome
    from emailq.providers.base import SendResult

DEFAULT_AUDIT_RETENTION = 90 * 24 * 3600.0


class Kind(StrEnum):
    ACCEPTED = "accepted"  # tenant, key, lane, reason, rcpt (hashes)
    SCHEDULED = "scheduled"  # due
    LEASED = "leased"  # worker, attempt
    ATTEMPT = "attempt"  # attempt, result, provider, code, provider_id
    RETRIED = "retried"  # due
    DEFERRED = "deferred"  # due (not tried: its provider was down or a limit said wait)
    RELEASED = "released"  # not tried: back in its lane (shutdown)
    REQUEUED = "requeued"  # a lapsed lease, or dead mail queued again
    SENT = "sent"
    DEAD = "dead"  # error
    CANCELLED = "cancelled"
    ERASED = "erased"  # rcpt (the hash asked for)
    SEALED = "sealed"  # key (re-sealed by emailq rotate-keys)


# The outcomes the feed (Broker.events_after) hands to webhooks; as FEED_KINDS in prelude.lua.
FEED_KINDS = (Kind.SENT, Kind.RETRIED, Kind.DEAD, Kind.CANCELLED)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    message_id: str
    at: float
    kind: Kind
    detail: Mapping[str, Any]

    def to_json(self) -> str:
        """One JSON line, as the export writes it."""
        body = {"id": self.message_id, "at": self.at, "kind": self.kind.value, **self.detail}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)


def detail_text(**fields: Any) -> str:
    """A detail object as stored: compact JSON without the fields that are None."""
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))


def event_from_json(message_id: str, text: str | bytes) -> AuditEvent:
    """An event as the Redis broker stores it: one JSON object with ``at`` and ``kind``."""
    body = json.loads(text)
    at, kind = float(body.pop("at")), Kind(body.pop("kind"))
    return AuditEvent(message_id, at, kind, body)


def sorted_events(events: Iterable[AuditEvent]) -> list[AuditEvent]:
    return sorted(events, key=lambda e: (e.at, _ORDER[e.kind]))


# Within one instant (one broker call), the order a message lives them in.
_ORDER = {kind: i for i, kind in enumerate(Kind)}

# An SMTP reply's code ("451 4.7.1 try later"), or an HTTP status ("HTTP 429", "status 503").
_REPLY_CODE = re.compile(r"(?:^|\b(?:HTTP|status|code)\s*)([2-5]\d\d)\b")


def reply_code(text: str | None) -> str | None:
    """The SMTP reply code or HTTP status a provider's reason starts with or names."""
    if not text:
        return None
    found = _REPLY_CODE.search(text)
    return found[1] if found else None


def attempt_detail(outcome: Outcome) -> str:
    """What an attempt's event records: its number, the provider, its reply code and the
    provider's message id (an address in the reply is masked already by the worker)."""
    return detail_text(
        attempt=outcome.job.attempts,
        provider=outcome.provider,
        code=reply_code(outcome.error),
        provider_id=outcome.provider_id or None,
    )


def with_attempt(outcome: Outcome, provider: str, result: SendResult) -> Outcome:
    """The worker's hook: the outcome, naming the provider that tried and its message id."""
    provider_id = getattr(result, "provider_id", None) or None
    return replace(outcome, provider=provider, provider_id=provider_id)
