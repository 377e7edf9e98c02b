"""What only the SQLite broker has: files made by older versions are brought up to date."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from emailq.broker import Action, Outcome, State
from emailq.broker.sqlite import SQLiteBroker
from emailq.clock import ManualClock

# The messages table as emailq 0.2 made it: no expires_at (mail did not expire by age).
SCHEMA_0_2 = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY, lane TEXT NOT NULL, state TEXT NOT NULL, tenant TEXT NOT NULL,
    payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_expires REAL, enqueued_at REAL NOT NULL,
    updated_at REAL NOT NULL, available_at REAL NOT NULL, last_error TEXT, idempotency_key TEXT
) WITHOUT ROWID;
"""


def test_a_file_from_before_expiry_gains_the_column_and_keeps_its_mail(
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
        assert broker.settle([Outcome(job, Action.RETRY, delay=86400, error="451")]) == ["old"]
        assert broker.get("old").state == State.RETRYING  # type: ignore[union-attr]
    with SQLiteBroker(path, clock=clock) as again:  # opening it twice changes nothing more
        assert again.get("old").expires_at == math.inf  # type: ignore[union-attr]
