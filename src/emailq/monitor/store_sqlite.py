"""The monitor's store in the queue's SQLite file: four small tables beside the messages."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from emailq.clock import Clock, now
from emailq.monitor.store import SAMPLE_MAX_AGE_S, MonitorStore, Samples

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS monitor_samples_at ON monitor_samples (at);
CREATE TABLE IF NOT EXISTS monitor_history (at REAL PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS monitor_kv (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS monitor_lease (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
"""


class SQLiteMonitorStore(MonitorStore):
    def __init__(self, path: str, clock: Clock = now) -> None:
        super().__init__(clock)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        with self._lock:
            self._db.executescript(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def publish_sample(self, body: bytes) -> None:
        at = self.clock()
        with self._write() as db:
            db.execute("INSERT INTO monitor_samples (at, body) VALUES (?, ?)", (at, body))
            # Nobody reads them without a monitor: keep the table bounded all the same.
            db.execute("DELETE FROM monitor_samples WHERE at < ?", (at - SAMPLE_MAX_AGE_S,))

    def take_samples(self, limit: int = 20_000) -> Samples:
        with self._lock:
            row = self._db.execute("SELECT body FROM monitor_kv WHERE name = 'cursor'").fetchone()
            after = int(row[0]) if row else 0
            rows = self._db.execute(
                "SELECT id, body FROM monitor_samples WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        cursor = str(rows[-1][0]) if rows else str(after)
        return Samples([bytes(body) for _, body in rows], cursor)

    def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        at = self.clock()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO monitor_lease (name, owner, expires_at) VALUES ('writer', ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                " WHERE monitor_lease.owner = excluded.owner OR monitor_lease.expires_at < ?",
                (owner, at + ttl_s, at),
            )
            return cursor.rowcount == 1

    def release_lease(self, owner: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM monitor_lease WHERE name = 'writer' AND owner = ?", (owner,))

    def write_snapshot(
        self, owner: str, at: float, body: bytes, cursor: str, keep_after: float, max_points: int
    ) -> bool:
        with self._write() as db:
            holder = db.execute(
                "SELECT owner, expires_at FROM monitor_lease WHERE name = 'writer'"
            ).fetchone()
            if holder is None or holder[0] != owner or holder[1] < self.clock():
                return False
            written = db.execute(
                "INSERT OR IGNORE INTO monitor_history (at, body) VALUES (?, ?)", (at, body)
            ).rowcount
            if not written:
                return False
            db.execute(
                "INSERT OR REPLACE INTO monitor_kv (name, body) VALUES ('cursor', ?)", (cursor,)
            )
            db.execute("DELETE FROM monitor_samples WHERE id <= ?", (int(cursor),))
            db.execute("DELETE FROM monitor_history WHERE at < ?", (keep_after,))
            db.execute(
                "DELETE FROM monitor_history WHERE at NOT IN"
                " (SELECT at FROM monitor_history ORDER BY at DESC LIMIT ?)",
                (max_points,),
            )
            return True

    def history(self, since: float, until: float) -> list[tuple[float, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, body FROM monitor_history WHERE at > ? AND at <= ? ORDER BY at",
                (since, until),
            ).fetchall()
        return [(float(at), bytes(body)) for at, body in rows]

    def get(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM monitor_kv WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def put(self, name: str, body: bytes) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO monitor_kv (name, body) VALUES (?, ?)", (name, body))

    def close(self) -> None:
        with self._lock:
            self._db.close()
