"""The webhook store in the queue's SQLite file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from emailq.webhooks.store import (
    CLAIM_S,
    Delivery,
    DeliveryState,
    Endpoint,
    Settlement,
    WebhookStore,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, url TEXT NOT NULL, events TEXT NOT NULL,
    secret TEXT NOT NULL, created_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_endpoints_tenant ON webhook_endpoints (tenant);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL,
    body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL,
    next_at REAL NOT NULL, last_error TEXT, UNIQUE (endpoint_id, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, created_at);
CREATE TABLE IF NOT EXISTS webhook_cursor (name TEXT PRIMARY KEY, cursor TEXT NOT NULL);
"""
_ENDPOINT = "id, tenant, url, events, secret, created_at"
_DELIVERY = (
    "id, endpoint_id, event_id, type, body, state, attempts, created_at, next_at, last_error"
)


class SQLiteWebhookStore(WebhookStore):
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        # Its own connection, without a sync per commit: a power cut can only take back the
        # latest commits, in order (WAL), so a delivery is at worst sent again and the
        # dispatcher's cursor goes back with the deliveries it made (read again, kept once).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def add_endpoint(self, endpoint: Endpoint) -> None:
        self._rows(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT}) VALUES (?, ?, ?, ?, ?, ?)",
            (endpoint.id, endpoint.tenant, endpoint.url, " ".join(endpoint.events),
             endpoint.secret, endpoint.created_at),
        )  # fmt: skip

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        rows = self._rows(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        return _endpoint(rows[0]) if rows else None

    def endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        if tenant is None:
            rows = self._rows(f"SELECT {_ENDPOINT} FROM webhook_endpoints ORDER BY created_at")
        else:
            rows = self._rows(
                f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE tenant = ? ORDER BY created_at",
                (tenant,),
            )
        return [_endpoint(row) for row in rows]

    def remove_endpoint(self, endpoint_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        return cursor.rowcount == 1

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        rows = [(d.id, d.endpoint_id, d.event_id, d.type, d.body, d.state.value, d.attempts,
                 d.created_at, d.next_at, d.last_error) for d in deliveries]  # fmt: skip
        with self._lock:
            before = self._db.total_changes
            self._db.executemany(
                f"INSERT OR IGNORE INTO webhook_deliveries ({_DELIVERY})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def claim_due(self, now: float, limit: int) -> list[Delivery]:
        rows = self._rows(
            f"UPDATE webhook_deliveries SET next_at = ? WHERE id IN (SELECT id FROM"
            " webhook_deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at"
            f" LIMIT ?) RETURNING {_DELIVERY}",
            (now + CLAIM_S, now, limit),
        )
        return [_delivery(row) for row in rows]

    def postpone(self, delivery_ids: Sequence[str], next_at: float) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE webhook_deliveries SET next_at = ? WHERE id = ? AND state = 'pending'",
                [(next_at, delivery_id) for delivery_id in delivery_ids],
            )

    def settle_many(self, settlements: Sequence[Settlement]) -> None:
        rows = [(s.state.value, s.next_at, s.error, s.delivery_id) for s in settlements]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one commit for the group
            try:
                self._db.executemany(
                    "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
                    " next_at = ?, last_error = ? WHERE id = ?",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def deliveries(
        self, endpoint_id: str, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        sql = f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE endpoint_id = ?"
        params: tuple[Any, ...] = (endpoint_id,)
        if state is not None:
            sql += " AND state = ?"
            params += (state.value,)
        rows = self._rows(f"{sql} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
        return [_delivery(row) for row in rows]

    def cursor(self) -> str:
        rows = self._rows("SELECT cursor FROM webhook_cursor WHERE name = 'feed'")
        return str(rows[0][0]) if rows else ""

    def save_cursor(self, cursor: str) -> None:
        self._rows(
            "INSERT INTO webhook_cursor (name, cursor) VALUES ('feed', ?)"
            " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
            (cursor,),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _endpoint(row: Sequence[Any]) -> Endpoint:
    endpoint_id, tenant, url, events, secret, created_at = row
    return Endpoint(id=endpoint_id, tenant=tenant, url=url, events=tuple(events.split()),
                    secret=secret, created_at=created_at)  # fmt: skip


def _delivery(row: Sequence[Any]) -> Delivery:
    (delivery_id, endpoint_id, event_id, kind, body, state, attempts, created_at, next_at,
     last_error) = row  # fmt: skip
    return Delivery(id=delivery_id, endpoint_id=endpoint_id, event_id=event_id, type=kind,
                    body=body, state=DeliveryState(state), attempts=attempts,
                    created_at=created_at, next_at=next_at, last_error=last_error)  # fmt: skip
