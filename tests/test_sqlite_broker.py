"""What only the SQLite broker has: older files brought up to date, and what check() sees."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from emailq.broker import Action, NewMessage, Outcome, State
from emailq.broker.sqlite import SQLiteBroker
from emailq.clock import ManualClock
from emailq.errors import BrokerFull

# The messages table as emailq 0.2 made it: no expires_at (mail did not expire by age).
SCHEMA_0_2 = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY, lane TEXT NOT NULL, state TEXT NOT NULL, tenant TEXT NOT NULL,
    payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_expires REAL, enqueued_at REAL NOT NULL,
    updated_at REAL NOT NULL, available_at REAL NOT NULL, last_error TEXT, idempotency_key TEXT
) WITHOUT ROWID;
"""


def test_a_file_from_before_expiry_gains_the_columns_and_keeps_its_mail(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_0_2)
        db.execute(
            "INSERT INTO messages (id, lane, state, tenant, payload, max_attempts, enqueued_at,"
            " updated_at, available_at) VALUES ('old', 'standard', 'queued', 't', x'00', 3,"
            " ?, ?, ?)",
            (clock(), clock(), clock()),
        )
    db.close()
    with SQLiteBroker(path, clock=clock) as broker:
        info = broker.get("old")
        assert info is not None and (info.max_attempts, info.expires_at) == (3, math.inf)
        clock.advance(30 * 86400)  # no age limit: it never expires, its count still holds
        [job] = broker.lease("w", 1, 30)
        assert (job.id, job.expires_at) == ("old", math.inf)
        assert job.payload == b"\x00"  # the body moved to a table of its own
        assert broker.settle([Outcome(job, Action.RETRY, delay=86400, error="451")]) == ["old"]
        assert broker.get("old").state == State.RETRYING  # type: ignore[union-attr]
    with SQLiteBroker(path, clock=clock) as again:  # opening it twice changes nothing more
        assert again.get("old").expires_at == math.inf  # type: ignore[union-attr]


def test_check_reports_a_disk_with_no_room_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLiteBroker(tmp_path / "q.db") as broker:
        assert broker.check() is None
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=200 * 1024))
        assert broker.check() == f"disk full: 200 KB free in {tmp_path}"


def test_check_reports_a_write_refused_for_room_until_one_succeeds(tmp_path: Path) -> None:
    with SQLiteBroker(tmp_path / "q.db") as broker:
        pages = broker._db.execute("PRAGMA page_count").fetchone()[0]
        broker._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow
        with pytest.raises(BrokerFull, match="database or disk is full"):
            broker.enqueue_many([NewMessage(b"x" * 100_000)])
        assert broker.check() == "disk full: database or disk is full"
        broker._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # room again
        broker.enqueue_many([NewMessage(b"x" * 100_000)])
        assert broker.check() is None
