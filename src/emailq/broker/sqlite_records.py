"""The embedded broker's records beyond the hot path: housekeeping (expired leases, due
mail, retention), cancels and requeues, the audit trail and erasure, and the reads behind
status, stats and the autoscaler."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from emailq.broker import sqlite_privacy as privacy
from emailq.broker.base import (
    FINAL_STATES,
    BatchMember,
    DeadFilter,
    FeedEvent,
    MessageInfo,
    State,
)
from emailq.broker.expiry import Tried, after_lapse
from emailq.broker.sqlite_file import SQLiteFile
from emailq.broker.sqlite_rows import (
    INFO_COLUMNS,
    delete_bodies,
    local,
    message_info,
    per_chunk,
    tenants_of,
)
from emailq.lanes import LANE_ORDER, Lane
from emailq.privacy.audit import FEED_KINDS, AuditEvent, Kind, detail_text
from emailq.privacy.erasure import ErasureCounts


class SQLiteRecords(SQLiteFile):
    def _drop_dead_payloads(self, db: sqlite3.Connection, ids: Sequence[str]) -> None:
        """A dead message's body goes with its death when no requeue window keeps it."""
        if self.options.dead_payload_retention != 0 or not ids:
            return
        dead = per_chunk(
            db,
            "UPDATE messages SET recipients = NULL"
            " WHERE id IN ({marks}) AND state = 'dead' RETURNING id",
            ids,
        )
        delete_bodies(db, [message_id for (message_id,) in dead])

    # -- housekeeping -------------------------------------------------------------------
    def _reap_expired(self, when: float | None, limit: int) -> int:
        at = local(when)
        with self._write() as db:
            rows = db.execute(
                "SELECT id, attempts, max_attempts, enqueued_at, expires_at FROM messages"
                " WHERE state = 'leased' AND lease_expires <= ? LIMIT ?",
                (at, limit),
            ).fetchall()
            back, dead = [], []
            for message_id, attempts, max_attempts, enqueued_at, expires_at in rows:
                tried = Tried(attempts=attempts, max_attempts=max_attempts or None,
                              enqueued_at=enqueued_at, expires_at=expires_at)  # fmt: skip
                error = after_lapse(tried, at)
                if error is None:
                    back.append((at, message_id))
                else:
                    dead.append((error, at, message_id))
            if self.options.audit:
                self._reap_events(db, back, dead, at)
            db.executemany(
                "UPDATE messages SET state = 'queued', owner = NULL, lease_expires = NULL,"
                " updated_at = ? WHERE id = ?",
                back,
            )
            db.executemany(
                "UPDATE messages SET state = 'dead', last_error = ?, owner = NULL,"
                " lease_expires = NULL, updated_at = ? WHERE id = ?",
                dead,
            )
            self._drop_dead_payloads(db, [message_id for _, _, message_id in dead])
            return len(rows)

    @staticmethod
    def _reap_events(
        db: sqlite3.Connection,
        back: Sequence[tuple[float, str]],
        dead: Sequence[tuple[str, float, str]],
        at: float,
    ) -> None:
        ids = [i for _, i in back] + [i for _, _, i in dead]
        tenants = tenants_of(db, ids)
        events = [(i, tenants[i], at, Kind.REQUEUED.value, detail_text(why="lease expired"))
                  for _, i in back]  # fmt: skip
        events += [(i, tenants[i], at, Kind.DEAD.value, detail_text(error=error))
                   for error, _, i in dead]  # fmt: skip
        privacy.write_events(db, events)

    def _promote_due(self, when: float | None, limit: int) -> int:
        with self._write() as db:
            return self._promote(db, local(when), limit)

    @staticmethod
    def _promote(db: sqlite3.Connection, at: float, limit: int) -> int:
        return db.execute(
            "UPDATE messages SET state = 'queued', updated_at = ?"
            " WHERE id IN (SELECT id FROM messages WHERE state IN ('scheduled', 'retrying')"
            " AND available_at <= ? ORDER BY available_at LIMIT ?)",
            (at, at, limit),
        ).rowcount

    def _requeue_dead(
        self, ids: Sequence[str] | None, only: DeadFilter, limit: int, when: float | None
    ) -> int:
        at = local(when)
        chosen = "SELECT id FROM messages WHERE state = 'dead'"
        params: list[Any] = []
        if ids is not None:
            chosen += f" AND id IN ({', '.join('?' * len(ids))})" if ids else " AND 0"
            params += ids
        for column, value in (("updated_at >=", only.since), ("lane =", only.lane),
                              ("tenant =", only.tenant)):  # fmt: skip
            if value is not None:
                chosen += f" AND {column} ?"
                params.append(value)
        ages = " ".join(f"WHEN '{lane.value}' THEN ?" for lane in LANE_ORDER)
        max_ages = [self.options.max_age[lane] for lane in LANE_ORDER]
        with self._write() as db:
            requeued = db.execute(
                "UPDATE messages SET state = 'queued', attempts = 0, available_at = ?,"
                f" expires_at = ? + CASE lane {ages} END,"
                f" updated_at = ? WHERE id IN ({chosen} ORDER BY updated_at LIMIT ?)"
                " RETURNING id, tenant",
                (at, at, *max_ages, at, *params, limit),
            ).fetchall()
            if self.options.audit:
                privacy.write_events(db, [(i, t, at, Kind.REQUEUED.value,
                                           detail_text(why="dead mail requeued"))
                                          for i, t in requeued])  # fmt: skip
            return len(requeued)

    def _cancel(self, message_id: str, when: float | None) -> bool:
        at = local(when)
        with self._write() as db:
            row = db.execute(
                "UPDATE messages SET state = 'cancelled', updated_at = ?"
                " WHERE id = ? AND state IN ('queued', 'scheduled', 'retrying') RETURNING tenant",
                (at, message_id),
            ).fetchone()
            if row and self.options.audit:
                privacy.write_events(db, [(message_id, row[0], at, Kind.CANCELLED.value, "{}")])
            return row is not None

    def _cancel_many(self, ids: Sequence[str], when: float | None) -> list[str]:
        """One transaction for a whole batch: one commit (one fsync), not one per guest."""
        at = local(when)
        with self._write() as db:
            cancelled = per_chunk(
                db,
                "UPDATE messages SET state = 'cancelled', updated_at = ?"
                " WHERE id IN ({marks})"
                " AND state IN ('queued', 'scheduled', 'retrying') RETURNING id, tenant",
                ids,
                at,
            )
            if self.options.audit:
                privacy.write_events(
                    db, [(i, t, at, Kind.CANCELLED.value, "{}") for i, t in cancelled]
                )
        return [message_id for message_id, _ in cancelled]

    def _purge_expired(self, when: float | None, limit: int) -> int:
        before = local(when) - self.options.retention
        final = ", ".join(f"'{state.value}'" for state in FINAL_STATES)
        with self._write() as db:
            self._drop_old_dead_payloads(db, local(when), limit)
            gone = [row[0] for row in db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                f" WHERE state IN ({final}) AND updated_at < ? LIMIT ?) RETURNING id",
                (before, limit),
            )]  # fmt: skip
            delete_bodies(db, gone)
            privacy.forget_purged(db, gone)
            return len(gone)

    def _drop_old_dead_payloads(self, db: sqlite3.Connection, at: float, limit: int) -> None:
        keep = self.options.dead_payload_retention
        if keep is None:
            return
        gone = [row[0] for row in db.execute(
            "DELETE FROM bodies WHERE id IN (SELECT m.id FROM messages m JOIN bodies b"
            " ON b.id = m.id WHERE m.state = 'dead' AND m.updated_at < ? LIMIT ?) RETURNING id",
            (at - keep, limit),
        )]  # fmt: skip
        per_chunk(db, "UPDATE messages SET recipients = NULL WHERE id IN ({marks})", gone)

    def _purge_audit(self, when: float | None, limit: int) -> int:
        with self._write() as db:
            return privacy.purge_audit(db, local(when) - self.options.audit_retention, limit)

    def _purge_preview(self, when: float | None) -> dict[str, int]:
        at = local(when)
        final = ", ".join(f"'{state.value}'" for state in FINAL_STATES)
        [(records,)] = self._read(
            f"SELECT COUNT(*) FROM messages WHERE state IN ({final}) AND updated_at < ?",
            (at - self.options.retention,),
        )
        [(events,)] = self._read(
            "SELECT COUNT(*) FROM audit_events WHERE at < ?", (at - self.options.audit_retention,)
        )
        bodies = 0
        if self.options.dead_payload_retention is not None:
            [(bodies,)] = self._read(
                "SELECT COUNT(*) FROM messages m JOIN bodies b ON b.id = m.id"
                " WHERE m.state = 'dead' AND m.updated_at < ?",
                (at - self.options.dead_payload_retention,),
            )
        return {"records": records, "audit_events": events, "dead_bodies": bodies}

    def _stored_payloads(self, cursor: str, count: int) -> tuple[str, list[tuple[str, bytes]]]:
        rows = self._read(
            "SELECT id, payload FROM bodies WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, count),
        )
        return (rows[-1][0] if len(rows) == count else ""), [(i, p) for i, p in rows]

    def _swap_payload(self, message_id: str, old: bytes, new: bytes) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE bodies SET payload = ? WHERE id = ? AND payload = ?",
                    (new, message_id, old),
                ).rowcount
                == 1
            )

    # -- the audit trail and erasure ------------------------------------------------------
    def _events(self, message_id: str) -> list[AuditEvent]:
        return privacy.events_of(self._read(
            "SELECT message_id, at, kind, detail FROM audit_events WHERE message_id = ?"
            " ORDER BY seq", (message_id,),
        ))  # fmt: skip

    def _tenant_events(
        self, tenant: str, since: float, until: float, limit: int
    ) -> list[AuditEvent]:
        return privacy.events_of(self._read(
            "SELECT message_id, at, kind, detail FROM audit_events"
            " WHERE tenant = ? AND at >= ? AND at < ? ORDER BY at, seq LIMIT ?",
            (tenant, since, until, limit),
        ))  # fmt: skip

    def _events_after(self, cursor: str, limit: int) -> list[FeedEvent]:
        """By the trail's seq: one writer at a time, so seq order is commit order."""
        rows = self._read(
            "SELECT a.seq, a.message_id, a.tenant, a.at, a.kind, a.detail, m.batch_id"
            " FROM audit_events a JOIN messages m ON m.id = a.message_id"
            f" WHERE a.seq > ? AND a.kind IN ({', '.join('?' * len(FEED_KINDS))})"
            " ORDER BY a.seq LIMIT ?",
            (int(cursor or 0), *FEED_KINDS, limit),
        )
        return [
            FeedEvent(cursor=str(seq), tenant=tenant, batch_id=batch_id,
                      event=AuditEvent(message_id, at, Kind(kind), json.loads(detail)))
            for seq, message_id, tenant, at, kind, detail, batch_id in rows
        ]  # fmt: skip

    def _find_recipient(self, recipient_hash: str, tenant: str | None) -> list[MessageInfo]:
        ids = self._read("SELECT message_id FROM recipient_index WHERE hash = ?", (recipient_hash,))
        found = [info for (i,) in ids if (info := self._get(i)) is not None]
        return [info for info in found if tenant is None or info.tenant == tenant]

    def _erase_recipient(
        self, recipient_hash: str, tenant: str | None, when: float | None
    ) -> ErasureCounts:
        with self._write() as db:
            counts = privacy.erase(db, recipient_hash, tenant, local(when), self.options.audit)
        if counts.erased:  # the old pages, zeroed in the file, leave the write-ahead log too
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    # -- reads --------------------------------------------------------------------------
    def _get(self, message_id: str) -> MessageInfo | None:
        rows = self._read(f"SELECT {INFO_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return message_info(rows[0]) if rows else None

    def _batch_members(self, batch_id: str) -> list[BatchMember]:
        rows = self._read(
            f"SELECT {INFO_COLUMNS}, b.payload FROM messages m LEFT JOIN bodies b USING (id)"
            " WHERE batch_id = ? ORDER BY id",
            (batch_id,),
        )
        # A sent or erased message keeps an empty payload: nothing to read.
        return [BatchMember(info=message_info(row[:-1]), payload=row[-1] or None) for row in rows]

    def _stats(
        self, when: float | None, tenant: str | None
    ) -> tuple[dict[tuple[Lane, State], int], dict[Lane, float], float]:
        at = local(when)
        sql = "SELECT lane, state, COUNT(*) FROM messages GROUP BY state, lane"
        params: tuple[str, ...] = ()
        oldest_sql = "SELECT MIN(available_at) FROM messages WHERE state = 'queued' AND lane = ?"
        if tenant is not None:  # on the messages_tenant_age index: the tenant's rows only
            sql = "SELECT lane, state, COUNT(*) FROM messages WHERE tenant = ? GROUP BY state, lane"
            params = (tenant,)
            oldest_sql += " AND tenant = ?"
        counts = {(Lane(lane), State(state)): n for lane, state, n in self._read(sql, params)}
        oldest: dict[Lane, float] = {}
        for lane in LANE_ORDER:
            row = self._read(oldest_sql, (lane.value, *params))
            if row and row[0][0] is not None:
                oldest[lane] = row[0][0]
        return counts, oldest, at

    def _due_within(self, seconds: float, when: float | None) -> dict[Lane, int]:
        rows = self._read(
            "SELECT lane, COUNT(*) FROM messages WHERE state IN ('scheduled', 'retrying')"
            " AND available_at <= ? GROUP BY lane",
            (local(when) + seconds,),
        )
        return {Lane(lane): n for lane, n in rows}

    def _ceremonies(
        self, within_s: float, limit: int, when: float | None
    ) -> list[tuple[float, int]]:
        at = local(when)
        rows = self._read(
            "SELECT ceremony_at, COUNT(*) FROM (SELECT ceremony_at FROM messages"
            " WHERE ceremony_at IS NOT NULL"
            " AND state IN ('queued', 'scheduled', 'leased', 'retrying')"
            " AND ceremony_at >= ? AND ceremony_at <= ? ORDER BY ceremony_at LIMIT ?)"
            " GROUP BY ceremony_at ORDER BY ceremony_at",
            (at, at + within_s, limit),
        )
        return [(float(ceremony), int(n)) for ceremony, n in rows]

    def _hold_lease(self, name: str, holder: str, ttl_s: float, when: float | None) -> bool:
        at = local(when)
        with self._write(replayable=True) as db:
            row = db.execute(
                "INSERT INTO named_lease (name, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE named_lease.holder = excluded.holder OR named_lease.expires_at <= ?"
                " RETURNING holder",
                (name, holder, at + ttl_s, at),
            ).fetchone()
        return row is not None

    def _release_lease(self, name: str, holder: str) -> None:
        with self._write(replayable=True) as db:
            db.execute("DELETE FROM named_lease WHERE name = ? AND holder = ?", (name, holder))
