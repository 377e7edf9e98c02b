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
        # Why: a commit lost to a power cut only forgets a few spent tokens, so the limits
        # need no fsync per decision (the queue's own writes keep theirs).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def try_acquire(self, requests: Sequence[LimitRequest]) -> Grant:
        keys = sorted({limit.key for request in requests for limit in request.limits})
        with self._lock:
            # Why: a refusal changes nothing, so it is decided on a plain read, without
            # the write lock: a tenant flooding at ten times its rate takes no write
            # transaction from the other tenants' intake (issue 11). Marks only move
            # forward, so what a read refuses is refused under the lock too.
            refusal = decide(requests, self._tats(keys), self.clock())
            if not any(refusal.granted):
                return refusal
            self._db.execute("BEGIN IMMEDIATE")
            try:
                tats = self._tats(keys)
                before = dict(tats)
                grant = decide(requests, tats, self.clock())
                self._db.executemany(
                    "INSERT INTO rate_tat (key, tat) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                    [(key, tat) for key, tat in tats.items() if before.get(key) != tat],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise
        return grant

    def _tats(self, keys: Sequence[str]) -> dict[str, float]:
        marks = ", ".join("?" * len(keys))
        query = f"SELECT key, tat FROM rate_tat WHERE key IN ({marks})"
        return dict(self._db.execute(query, keys))

    def close(self) -> None:
        with self._lock:
            self._db.close()
