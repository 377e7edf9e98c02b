"""The embedded broker's file: one SQLite file in WAL mode, safe for several processes on one
machine. Its connection, its transactions, its schema (and the migration of older files), and
its health; what the broker does with it is in :mod:`emailq.broker.sqlite` (the hot path) and
:mod:`emailq.broker.sqlite_records` (everything else).

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent workers queue up on
SQLite's write lock (``busy_timeout``) instead of failing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from emailq.broker.base import (
    Broker,
    BrokerOptions,
)
from emailq.clock import Clock, now
from emailq.errors import BrokerError, BrokerFull, BrokerUnavailable, ConfigurationError

_SYNC_MODES = ("off", "normal", "full", "extra")
BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's to finish
MIN_FREE_BYTES = 1024 * 1024  # less free space than this where the file lives: "disk full"
# As in sqlite_schema.sql, for files from before it (_migrate_columns).
_BODIES_TABLE = "CREATE TABLE IF NOT EXISTS bodies (id TEXT PRIMARY KEY, payload BLOB NOT NULL)"


class Busy(Exception):
    """Another writer holds the lock, and try_settle does not wait for it."""


class SQLiteFile(Broker):
    def __init__(
        self,
        path: str | Path,
        options: BrokerOptions | None = None,
        clock: Clock | None = None,
        synchronous: str = "full",
    ) -> None:
        super().__init__(options, clock)
        if synchronous not in _SYNC_MODES:
            raise ConfigurationError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        self.path = str(path)
        self._synchronous = self._synchronous_now = synchronous
        # One connection, shared by the threads of a process; reentrant for try_settle.
        self._lock = threading.RLock()
        self._wait_for_writers = True  # False inside try_settle: busy is an answer, not a wait
        self._refused: str | None = None  # why the last write failed for want of room
        with self._backend_errors():
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a 202 means the message survives power loss; NORMAL trades that for speed.
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000:.0f}")
            # Deleted and overwritten content (a dropped body, an erased address) is zeroed
            # in the file, not left in free space for a copy of the file to give away.
            self._db.execute("PRAGMA secure_delete=ON")
            schema = resources.files("emailq.broker").joinpath("sqlite_schema.sql").read_text()
            with self._lock:  # executescript manages its own transaction
                self._migrate_columns()
                self._db.executescript(schema)

    def _migrate_columns(self) -> None:
        """Bring files made by older versions up to this schema (nothing for a new file),
        under the write lock: processes that open an old file together migrate it once."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "seq" in columns:  # before 0.2 the fencing token was named seq
                self._db.execute("ALTER TABLE messages RENAME COLUMN seq TO token")
            if columns and "expires_at" not in columns:  # before 0.3 mail did not expire:
                # its messages keep their max_attempts and never expire by age.
                self._db.execute("ALTER TABLE messages ADD COLUMN expires_at REAL")
            if columns and "recipients" not in columns:  # before 0.3: always every recipient
                self._db.execute("ALTER TABLE messages ADD COLUMN recipients TEXT")
            if columns and "batch_id" not in columns:  # before batches (issue 16)
                self._db.execute("ALTER TABLE messages ADD COLUMN batch_id TEXT")
            if columns and "ceremony_at" not in columns:  # before the autoscaler read them
                self._db.execute("ALTER TABLE messages ADD COLUMN ceremony_at REAL")
            if "payload" in columns:  # before bodies had a table of their own
                self._db.execute(_BODIES_TABLE)
                self._db.execute(
                    "INSERT INTO bodies (id, payload)"
                    " SELECT id, payload FROM messages WHERE length(payload) > 0"
                )
                self._db.execute("ALTER TABLE messages DROP COLUMN payload")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @classmethod
    def from_url(
        cls, url: str, options: BrokerOptions | None = None, clock: Clock | None = None
    ) -> Self:
        """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``; ``?synchronous=normal``."""
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigurationError(f"a SQLite URL looks like sqlite:///path/to/file.db: {url}")
        query = parse_qs(parts.query)
        synchronous = query.get("synchronous", ["full"])[0].lower()
        return cls(path, options=options, clock=clock, synchronous=synchronous)

    @contextmanager
    def _write(self, replayable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``replayable``: a write whose loss in a power cut only
        makes work be done again (a lease returns to the queue, a settled message is sent
        once more), never loses mail: committed without waiting for the disk (NORMAL), as
        settling as mail goes out commits often. Intake keeps the configured durability."""
        with self._lock:
            relaxed = replayable and self._synchronous in ("full", "extra")
            self._use_synchronous("normal" if relaxed else self._synchronous)
            yield from self._transaction()

    def _use_synchronous(self, mode: str) -> None:
        if mode != self._synchronous_now:  # a worker's writes are all replayable: set once
            self._db.execute(f"PRAGMA synchronous={mode.upper()}")
            self._synchronous_now = mode

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock in short naps. SQLite's own busy
        handler sleeps a whole millisecond at first, then longer: with worker processes
        committing thousands of settles a second between them, those sleeps, not the
        writes, would set the pace."""
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            nap, give_up_at = 50e-6, time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    if not self._wait_for_writers:
                        raise Busy from error
                    if time.monotonic() > give_up_at:
                        raise
                time.sleep(nap)
                nap = min(nap * 2, 1e-3)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000:.0f}")

    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._begin()
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (SQLITE_FULL among them): a
            # second ROLLBACK would raise and hide the error that matters.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._refused = None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _now(self) -> float:
        return now()

    def _translate(self, error: Exception) -> BrokerError | None:
        if not isinstance(error, sqlite3.Error):
            return None
        text = str(error)
        if isinstance(error, sqlite3.OperationalError):
            if "full" in text:  # "database or disk is full"
                self._refused = text
                return BrokerFull(f"the SQLite file {self.path} cannot grow: {text}")
            return BrokerUnavailable(f"the SQLite file {self.path} is unavailable: {text}")
        return BrokerError(f"SQLite: {text}")

    def _ping(self) -> bool:
        try:
            return self._read("SELECT 1") == [(1,)]
        except sqlite3.Error:
            return False

    def _check(self) -> str | None:
        where = os.path.dirname(os.path.abspath(self.path))
        free = shutil.disk_usage(where).free
        if free < MIN_FREE_BYTES:
            return f"disk full: {free / 1024:.0f} KB free in {where}"
        if self._refused is not None:
            return f"disk full: {self._refused}"
        try:
            self._read("SELECT 1")
        except sqlite3.Error as error:
            return f"unavailable: {error}"
        return None

    def purge(self) -> None:
        with self._write() as db:
            for table in ("messages", "bodies", "idempotency", "lane_credit", "audit_events",
                          "recipient_index", "named_lease"):  # fmt: skip
                db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
