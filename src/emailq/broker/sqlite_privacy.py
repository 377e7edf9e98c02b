"""The SQLite broker's audit trail, recipient index and erasure (emailq.privacy).

Functions over the broker's connection, called inside its transactions: the events of a
state change commit with it or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from emailq.broker.sqlite_rows import per_chunk
from emailq.privacy.audit import AuditEvent, Kind, detail_text
from emailq.privacy.erasure import ErasureCounts

# (message_id, tenant, at, kind, detail JSON)
EventRow = tuple[str, str, float, str, str]
_LIVE_UNLEASED = ("queued", "scheduled", "retrying")


def write_events(db: sqlite3.Connection, rows: Sequence[EventRow]) -> None:
    if rows:
        db.executemany(
            "INSERT INTO audit_events (message_id, tenant, at, kind, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def index_recipients(db: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> None:
    """(hash, message id) pairs."""
    if pairs:
        db.executemany(
            "INSERT OR IGNORE INTO recipient_index (hash, message_id) VALUES (?, ?)", pairs
        )


def events_of(rows: Iterable[tuple[Any, ...]]) -> list[AuditEvent]:
    """Rows of (message_id, at, kind, detail) as events, in the order given."""
    return [
        AuditEvent(message_id, float(at), Kind(kind), json.loads(detail))
        for message_id, at, kind, detail in rows
    ]


def purge_audit(db: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events, those before ``cutoff``."""
    return db.execute(
        "DELETE FROM audit_events WHERE seq IN (SELECT seq FROM audit_events"
        " WHERE at < ? ORDER BY seq LIMIT ?)",
        (cutoff, limit),
    ).rowcount


def forget_purged(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Index rows of messages no longer on record."""
    per_chunk(db, "DELETE FROM recipient_index WHERE message_id IN ({marks})", ids)


def erase(
    db: sqlite3.Connection, recipient_hash: str, tenant: str | None, at: float, audit: bool
) -> ErasureCounts:
    sql = (
        "SELECT m.id, m.state, m.tenant, m.lane, m.idempotency_key,"
        " EXISTS (SELECT 1 FROM bodies b WHERE b.id = m.id) OR m.recipients IS NOT NULL"
        " OR m.idempotency_key IS NOT NULL"
        " FROM recipient_index r JOIN messages m ON m.id = r.message_id WHERE r.hash = ?"
    )
    params: tuple[str, ...] = (recipient_hash,)
    if tenant is not None:
        sql += " AND m.tenant = ?"
        params += (tenant,)
    found = db.execute(sql, params).fetchall()
    counts = ErasureCounts(messages=len(found))
    events: list[EventRow] = []
    for message_id, state, owner, _lane, idem_key, holds_data in found:
        if state in _LIVE_UNLEASED:
            db.execute(
                "UPDATE messages SET state = 'cancelled', updated_at = ? WHERE id = ?",
                (at, message_id),
            )
            events.append((message_id, owner, at, Kind.CANCELLED.value, "{}"))
            counts += ErasureCounts(cancelled=1)
        elif state == "leased":
            counts += ErasureCounts(in_flight=1)
        if idem_key is not None:
            gone = db.execute(
                "DELETE FROM idempotency WHERE scope = ? AND id = ?",
                (f"{owner}\x1f{idem_key}", message_id),
            ).rowcount
            counts += ErasureCounts(idempotency_keys=gone)
        if holds_data:
            db.execute("DELETE FROM bodies WHERE id = ?", (message_id,))
            db.execute(
                "UPDATE messages SET recipients = NULL, idempotency_key = NULL, updated_at = ?"
                " WHERE id = ?",
                (at, message_id),
            )
            events.append(
                (message_id, owner, at, Kind.ERASED.value, detail_text(rcpt=recipient_hash))
            )
            counts += ErasureCounts(erased=1)
    if audit:
        write_events(db, events)
    return counts
