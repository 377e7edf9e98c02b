"""What a batch looks like now, from its members (``Broker.batch_members``): counts per
state and lane, first and last delivery, and a page of its recipients. Pure functions.

A dead recipient retried by ``POST /v1/batches/{id}/retry`` gets a new message in the same
batch; the dead one is then *superseded*: it stays listed (with ``retried_by``) but is no
longer counted, so the counts say what each guest's mail is now.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emailq.broker import BatchMember, State
from emailq.broker.base import LIVE_STATES
from emailq.message import Email

# A retry's idempotency key: the dead message's id after it, so retrying twice (or a
# repeated request) queues no second copy for the same guest.
RETRY_KEY_PREFIX = "emailq-retry:"
PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class BatchView:
    members: Sequence[BatchMember]
    retried_by: dict[str, str]  # superseded dead id → the id of its retry

    @classmethod
    def of(cls, members: Sequence[BatchMember]) -> BatchView:
        retried_by = {}
        for member in members:
            key = member.info.idempotency_key or ""
            if key.startswith(RETRY_KEY_PREFIX):
                retried_by[key.removeprefix(RETRY_KEY_PREFIX)] = member.info.id
        return cls(members, retried_by)

    @property
    def current(self) -> list[BatchMember]:
        """Each guest's latest message: every member but the superseded."""
        return [m for m in self.members if m.info.id not in self.retried_by]

    def dead(self) -> list[BatchMember]:
        return [m for m in self.current if m.info.state is State.DEAD]

    def complete(self) -> bool:
        """Nothing of the batch is still to be delivered."""
        return bool(self.members) and all(m.info.state not in LIVE_STATES for m in self.current)

    def summary(self) -> dict[str, Any]:
        current = self.current
        states = Counter(m.info.state.value for m in current)
        lanes: dict[str, Counter[str]] = {}
        for member in current:
            lanes.setdefault(member.info.lane.value, Counter())[member.info.state.value] += 1
        sent = [m.info.updated_at for m in current if m.info.state is State.SENT]
        return {
            "total": len(current),
            "counts": {state.value: states.get(state.value, 0) for state in State},
            "lanes": {lane: dict(counts) for lane, counts in lanes.items()},
            "retried": len(self.retried_by),
            "complete": self.complete(),
            "first_delivered_at": min(sent) if sent else None,
            "last_delivered_at": max(sent) if sent else None,
        }

    def page(
        self, state: State | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Recipients (by message id, oldest first) after the cursor ``after``, those in
        ``state`` when given; and the next cursor, None on the last page."""
        chosen = [
            m for m in self.members
            if (state is None or m.info.state is state) and (after is None or m.info.id > after)
        ]  # fmt: skip
        page = chosen[:limit]
        rows = [self._row(m) for m in page]
        return rows, (page[-1].info.id if len(chosen) > limit else None)

    def _row(self, member: BatchMember) -> dict[str, Any]:
        info = member.info
        return {
            "id": info.id, "to": recipients_of(member.payload), "state": info.state.value,
            "lane": info.lane.value, "attempts": info.attempts, "last_error": info.last_error,
            "updated_at": info.updated_at, "retried_by": self.retried_by.get(info.id),
        }  # fmt: skip


def recipients_of(payload: bytes | None) -> list[str] | None:
    """The addresses as stored; None once the body is gone (sent, erased, purged)."""
    if payload is None:
        return None
    try:
        return [address.email for address in Email.from_payload(payload).to]
    except ValueError:
        return None
