"""Provider health in the embedded broker's SQLite file, shared by its worker processes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from emailq.clock import Clock, now
from emailq.failover.state import ProviderHealth
from emailq.failover.store import Change, HealthStore

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS provider_health (name TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS provider_checker"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, until REAL NOT NULL)",
)


class SQLiteHealthStore(HealthStore):
    def __init__(self, path: str, clock: Clock = now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def read(self) -> dict[str, ProviderHealth]:
        with self._lock:
            rows = self._db.execute("SELECT name, record FROM provider_health").fetchall()
        return {name: ProviderHealth.from_json(record) for name, record in rows}

    def update(self, name: str, change: Change) -> ProviderHealth:
        with self._transaction():
            row = self._db.execute(
                "SELECT record FROM provider_health WHERE name = ?", (name,)
            ).fetchone()
            record = change(ProviderHealth.from_json(row[0]) if row else ProviderHealth(name))
            self._db.execute(
                "INSERT INTO provider_health (name, record) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                (name, record.to_json()),
            )
        return record

    def hold_checker(self, holder: str, lease_s: float) -> bool:
        with self._transaction():
            at = self.clock()
            cursor = self._db.execute(
                "INSERT INTO provider_checker (id, holder, until) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until"
                " WHERE provider_checker.holder = excluded.holder OR provider_checker.until <= ?",
                (holder, at + lease_s, at),
            )
            return cursor.rowcount == 1

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
