"""Rows of the embedded broker's tables, to and from Python: the audit events a change
writes, lookups by id in chunks, a record as a MessageInfo."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from emailq.broker.base import (
    Action,
    MessageInfo,
    NewMessage,
    Outcome,
    State,
)
from emailq.broker.expiry import expired
from emailq.clock import now
from emailq.lanes import Lane
from emailq.privacy.audit import Kind, attempt_detail, detail_text

if TYPE_CHECKING:  # sqlite_privacy runs its statements through per_chunk
    from emailq.broker.sqlite_privacy import EventRow

CHUNK = 400  # rows per multi-row statement; stays far below SQLite's variable limit
INFO_COLUMNS = (
    "id, state, lane, tenant, attempts, max_attempts, enqueued_at, updated_at,"
    " available_at, last_error, idempotency_key, expires_at, batch_id"
)


def accepted_events(
    message_id: str, message: NewMessage, at: float, scheduled_for: float | None
) -> list[EventRow]:
    detail = detail_text(tenant=message.tenant, lane=message.lane.value,
                         rcpt=list(message.recipient_hashes) or None,
                         **dict(message.origin or {}))  # fmt: skip
    events = [(message_id, message.tenant, at, Kind.ACCEPTED.value, detail)]
    if scheduled_for is not None:
        due = detail_text(due=scheduled_for)
        events.append((message_id, message.tenant, at, Kind.SCHEDULED.value, due))
    return events


def lease_event(row: tuple[Any, ...], worker: str, at: float) -> EventRow:
    """A row _take returned: leased, or buried for its age on the way."""
    message_id, attempts, tenant, state = row[0], row[3], row[6], row[9]
    if state == State.DEAD:
        return (message_id, tenant, at, Kind.DEAD.value, detail_text(error=expired(None)))
    return (message_id, tenant, at, Kind.LEASED.value, detail_text(worker=worker, attempt=attempts))


def settle_events(
    o: Outcome, at: float, fates: dict[str, tuple[State, float, str | None]]
) -> list[EventRow]:
    """The events one settled outcome writes: its attempt, then what became of it."""
    job = o.job
    if o.action is Action.RELEASE:
        return [(job.id, job.tenant, at, Kind.RELEASED.value, "{}")]
    fate = fates.get(job.id)
    if o.action is Action.DEFER:
        assert fate is not None
        if fate[0] is State.DEAD:
            return [(job.id, job.tenant, at, Kind.DEAD.value, detail_text(error=fate[2]))]
        return [(job.id, job.tenant, at, Kind.DEFERRED.value, detail_text(due=fate[1]))]
    events = [(job.id, job.tenant, at, Kind.ATTEMPT.value, attempt_detail(o))]
    if o.action is Action.COMPLETE:
        events.append((job.id, job.tenant, at, Kind.SENT.value, "{}"))
    elif o.action is Action.BURY or (fate and fate[0] is State.DEAD):
        error = fate[2] if fate else o.error
        events.append((job.id, job.tenant, at, Kind.DEAD.value, detail_text(error=error)))
    else:
        assert fate is not None
        events.append((job.id, job.tenant, at, Kind.RETRIED.value, detail_text(due=fate[1])))
    return events


def per_chunk(
    db: sqlite3.Connection, sql: str, ids: Sequence[str], *before: Any
) -> list[tuple[Any, ...]]:
    """Run ``sql`` for ``ids`` in chunks of CHUNK, each chunk's placeholders where ``sql``
    says ``{marks}`` and the ``before`` parameters ahead of them; the rows every chunk
    returned."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows += db.execute(sql.format(marks=marks), (*before, *chunk)).fetchall()
    return rows


def by_id(db: sqlite3.Connection, select: str, ids: Sequence[str]) -> dict[str, Any]:
    """``select`` (of id and one value) for these ids, in chunks: id → value."""
    return dict(per_chunk(db, select + " WHERE id IN ({marks})", ids))


def bodies_of(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, bytes]:
    return by_id(db, "SELECT id, payload FROM bodies", ids)


def tenants_of(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    return by_id(db, "SELECT id, tenant FROM messages", ids)


def delete_bodies(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    per_chunk(db, "DELETE FROM bodies WHERE id IN ({marks})", ids)


def message_info(row: Sequence[Any]) -> MessageInfo:
    (message_id, state, lane, tenant, attempts, max_attempts, enqueued_at, updated_at,
     available_at, last_error, idempotency_key, expires_at, batch_id) = row  # fmt: skip
    return MessageInfo(
        id=message_id,
        state=State(state),
        lane=Lane(lane),
        tenant=tenant,
        attempts=attempts,
        max_attempts=max_attempts or None,
        enqueued_at=enqueued_at,
        updated_at=updated_at,
        available_at=available_at,
        last_error=last_error,
        idempotency_key=idempotency_key,
        expires_at=math.inf if expires_at is None else expires_at,
        batch_id=batch_id,
    )


def local(at: float | None) -> float:
    """The injected clock's time, or this machine's: one file has one machine's clock."""
    return now() if at is None else at
