"""Limits kept in the embedded broker's SQLite file, shared by its worker processes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from emailq.clock import Clock, now
from emailq.ratelimit.base import Grant, Limiter, LimitRequest, decide

_SCHEMA = "CREATE TABLE IF NOT EXISTS rate_tat (key TEXT PRIMARY KEY, tat REAL NOT NULL)"


class SQLiteLimiter(Limiter):
    def __init__(self, path: str, clock: Clock = now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute(_SCHEMA)

    def try_acquire(self, requests: Sequence[LimitRequest]) -> Grant:
        keys = sorted({limit.key for request in requests for limit in request.limits})
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                at = self.clock()
                marks = ", ".join("?" * len(keys))
                tats = dict(
                    self._db.execute(f"SELECT key, tat FROM rate_tat WHERE key IN ({marks})", keys)
                )
                grant = decide(requests, tats, at)
                self._db.executemany(
                    "INSERT INTO rate_tat (key, tat) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                    list(tats.items()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise
        return grant

    def close(self) -> None:
        with self._lock:
            self._db.close()
