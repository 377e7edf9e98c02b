"""The embedded broker: one SQLite file in WAL mode, safe for several processes on one machine.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent workers queue up on
SQLite's write lock (``busy_timeout``) instead of failing; leases are one
``UPDATE … RETURNING`` per lane, so a message can only be taken by one transaction.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emailq.broker import sqlite_privacy as privacy
from emailq.broker.base import (
    FINAL_STATES,
    Action,
    BatchMember,
    Broker,
    BrokerOptions,
    DeadFilter,
    FeedEvent,
    Job,
    MessageInfo,
    NewMessage,
    Outcome,
    State,
    check_lease,
)
from emailq.broker.calls import BrokerCalls
from emailq.broker.expiry import Tried, after_deferral, after_lapse, after_retry, expired
from emailq.broker.sqlite_privacy import EventRow
from emailq.clock import Clock, now
from emailq.errors import BrokerError, BrokerFull, BrokerUnavailable, ConfigurationError
from emailq.ids import new_id
from emailq.lanes import LANE_ORDER, Lane
from emailq.privacy.audit import FEED_KINDS, AuditEvent, Kind, attempt_detail, detail_text
from emailq.privacy.erasure import ErasureCounts
from emailq.scheduling import allot

_SYNC_MODES = ("off", "normal", "full", "extra")
BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's to finish
CRITICAL_POLL_S = 0.005  # the express loop's look for critical mail: ~20 µs on the loop
MIN_FREE_BYTES = 1024 * 1024  # less free space than this where the file lives: "disk full"
_CHUNK = 400  # rows per multi-row statement; stays far below SQLite's variable limit
_JOB_COLUMNS = (  # what _take returns of each row; the body comes from bodies
    "id, token, lane, attempts, max_attempts, enqueued_at, tenant, available_at, expires_at,"
    " state, recipients"
)
# As in sqlite_schema.sql, for files from before it (_migrate_columns).
_BODIES_TABLE = "CREATE TABLE IF NOT EXISTS bodies (id TEXT PRIMARY KEY, payload BLOB NOT NULL)"
_INFO_COLUMNS = (
    "id, state, lane, tenant, attempts, max_attempts, enqueued_at, updated_at,"
    " available_at, last_error, idempotency_key, expires_at, batch_id"
)
_VALUE_NAMES = (
    "id",
    "token",
    "due",
    "error",
    "state",
    "attempts",
    "recipients",
)  # _update_leased's v.*
# A message past its expires_at (NULL: never) when a lease finds it.
_EXPIRED = "expires_at <= :at"
_EXPIRED_ERROR = (
    f"'{expired(None)}' || COALESCE('; last error: ' || last_error, '')"  # = expiry.expired()
)


class SQLiteBroker(Broker):
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
    ) -> SQLiteBroker:
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
                        raise _Busy from error
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

    # -- intake -------------------------------------------------------------------------
    def _enqueue_many(self, messages: Sequence[NewMessage], when: float | None) -> list[str]:
        at = _local(when)
        ids: list[str] = []
        rows: list[tuple[Any, ...]] = []
        events: list[EventRow] = []
        hashes: list[tuple[str, str]] = []
        bodies: list[tuple[str, bytes]] = []
        with self._write() as db:
            db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (at,))
            for message in messages:
                message_id = new_id()
                owner = self._claim_key(db, message, message_id, at)
                ids.append(owner)
                if owner != message_id:
                    continue  # the key was seen: the first message stands for this one
                due = message.send_at if message.send_at and message.send_at > at else at
                state = State.SCHEDULED if due > at else State.QUEUED
                expires = message.expires_at
                if expires is None:
                    expires = due + self.options.max_age[message.lane]
                rows.append((
                    message_id, message.lane.value, state.value, message.tenant,
                    message.max_attempts or 0, at, at, due, message.idempotency_key, expires,
                    message.batch_id, message.ceremony_at,
                ))  # fmt: skip
                bodies.append((message_id, message.payload))
                hashes += [(h, message_id) for h in message.recipient_hashes]
                events += _accepted(message_id, message, at, due if due > at else None)
            privacy.index_recipients(db, hashes)
            if self.options.audit:
                privacy.write_events(db, events)
            db.executemany(
                "INSERT INTO messages (id, lane, state, tenant, max_attempts, enqueued_at,"
                " updated_at, available_at, idempotency_key, expires_at, batch_id, ceremony_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("INSERT INTO bodies (id, payload) VALUES (?, ?)", bodies)
        return ids

    def _claim_key(
        self, db: sqlite3.Connection, message: NewMessage, message_id: str, at: float
    ) -> str:
        """The id that owns this message's idempotency key: an earlier one, or ``message_id``."""
        if message.idempotency_key is None:
            return message_id
        scope = f"{message.tenant}\x1f{message.idempotency_key}"
        row = db.execute("SELECT id FROM idempotency WHERE scope = ?", (scope,)).fetchone()
        if row:
            return str(row[0])
        db.execute(
            "INSERT INTO idempotency (scope, id, expires_at) VALUES (?, ?, ?)",
            (scope, message_id, at + self.options.idempotency_ttl),
        )
        return message_id

    # -- workers ------------------------------------------------------------------------
    def _lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        when: float | None,
        lanes: frozenset[Lane],
        request_id: str | None,  # a local file loses no replies: nothing to repeat
    ) -> list[Job]:
        at = _local(when)
        if not self._work_waits(at, lanes):
            return []  # no write lock for an empty poll: an idle worker holds it never
        jobs: list[tuple[Any, ...]] = []
        with self._write(replayable=True) as db:
            self._promote(db, at, 1000)
            ready = {
                lane: db.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM messages"
                    " WHERE state = 'queued' AND lane = ? LIMIT ?)",
                    (lane.value, max_n),
                ).fetchone()[0]
                if lane in lanes
                else 0
                for lane in LANE_ORDER
            }
            credit = {Lane(k): v for k, v in db.execute("SELECT lane, credit FROM lane_credit")}
            take = allot(max_n, ready, self.options.lane_weights, credit)
            db.executemany(
                "INSERT INTO lane_credit (lane, credit) VALUES (?, ?)"
                " ON CONFLICT (lane) DO UPDATE SET credit = excluded.credit",
                [(lane.value, value) for lane, value in credit.items()],
            )
            for lane, count in take.items():
                if count:
                    jobs.extend(self._take(db, lane, count, worker, at + lease_s, at))
            if self.options.audit:
                privacy.write_events(db, [_lease_event(row, worker, at) for row in jobs])
            self._drop_dead_payloads(db, [row[0] for row in jobs if row[9] == State.DEAD])
            leased = [row for row in jobs if row[9] == State.LEASED]
            bodies = _bodies(db, [row[0] for row in leased])
        rank = {lane.value: i for i, lane in enumerate(LANE_ORDER)}
        leased.sort(key=lambda row: (rank[row[2]], row[7], row[0]))
        return [
            Job(
                id=message_id,
                token=token,
                lane=Lane(lane),
                payload=bodies.get(message_id, b""),
                attempts=attempts,
                max_attempts=max_attempts or None,
                enqueued_at=float(enqueued_at),
                tenant=tenant,
                expires_at=math.inf if expires_at is None else float(expires_at),
                recipients=tuple(recipients.split()) if recipients else None,
            )
            for (message_id, token, lane, attempts, max_attempts, enqueued_at, tenant, _,
                 expires_at, _, recipients) in leased
        ]  # fmt: skip

    def _work_waits(
        self, at: float, lanes: frozenset[Lane], reader: sqlite3.Connection | None = None
    ) -> bool:
        """Whether a lease could find anything: mail queued in these lanes, or any due to be
        promoted. Read without the write lock (a snapshot; a race only costs one poll), on
        ``reader`` if given (a connection of its own), else on the shared one."""
        wanted = [lane.value for lane in lanes]
        sql = (
            "SELECT EXISTS (SELECT 1 FROM messages WHERE state = 'queued'"
            f" AND lane IN ({', '.join('?' * len(wanted))}))"
            " OR EXISTS (SELECT 1 FROM messages WHERE state IN ('scheduled', 'retrying')"
            " AND available_at <= ?)"
        )
        if reader is not None:
            return bool(reader.execute(sql, (*wanted, at)).fetchone()[0])
        return bool(self._read(sql, (*wanted, at))[0][0])

    def reader(self) -> sqlite3.Connection:
        """A connection for quick reads from one event loop: it shares no lock with the
        threads that write on the broker's own (WAL readers do not wait for writers)."""
        with self._backend_errors():
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    @staticmethod
    def _take(
        db: sqlite3.Connection, lane: Lane, count: int, worker: str, expires: float, at: float
    ) -> list[tuple[Any, ...]]:
        """Lease the lane's oldest ``count``; those past their expires_at are buried instead
        (a ceremony change after the ceremony is worse than none) and come back dead."""
        return db.execute(
            "UPDATE messages SET token = token + 1, updated_at = :at,"
            f" state = CASE WHEN {_EXPIRED} THEN 'dead' ELSE 'leased' END,"
            f" attempts = CASE WHEN {_EXPIRED} THEN attempts ELSE attempts + 1 END,"
            f" last_error = CASE WHEN {_EXPIRED} THEN {_EXPIRED_ERROR} ELSE last_error END,"
            f" owner = CASE WHEN {_EXPIRED} THEN NULL ELSE :worker END,"
            f" lease_expires = CASE WHEN {_EXPIRED} THEN NULL ELSE :lease_expires END"
            " WHERE id IN (SELECT id FROM messages WHERE state = 'queued' AND lane = :lane"
            " ORDER BY available_at, id LIMIT :count)"
            f" RETURNING {_JOB_COLUMNS}",
            {"at": at, "worker": worker, "lease_expires": expires, "lane": lane.value,
             "count": count},
        ).fetchall()  # fmt: skip

    def _heartbeat(self, jobs: Sequence[Job], lease_s: float, when: float | None) -> list[str]:
        at = _local(when)
        with self._write(replayable=True) as db:
            return self._update_leased(
                db,
                "lease_expires = ?, updated_at = ?",
                (at + lease_s, at),
                [(job.id, job.token) for job in jobs],
            )

    def calls(self) -> BrokerCalls:
        return SQLiteCalls(self)

    def try_settle(self, outcomes: Sequence[Outcome]) -> list[str] | None:
        """settle() if it can be done at once; None when another thread of this process or
        another process holds the write lock (the caller then settles on a thread, where
        waiting for it does not stall an event loop)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._wait_for_writers = False
            return self.settle(outcomes)
        except _Busy:
            return None
        finally:
            self._wait_for_writers = True
            self._lock.release()

    def _settle(self, outcomes: Sequence[Outcome], when: float | None) -> list[str]:
        at = _local(when)
        by_action: dict[Action, list[Outcome]] = {action: [] for action in Action}
        for outcome in outcomes:
            by_action[outcome.action].append(outcome)
        settled: list[str] = []
        with self._write(replayable=True) as db:
            settled += self._update_leased(
                db,
                "state = 'sent', recipients = NULL, owner = NULL, lease_expires = NULL,"
                " updated_at = ?",
                (at,),
                [(o.job.id, o.job.token) for o in by_action[Action.COMPLETE] if not o.error],
            )
            settled += self._update_leased(  # with a note: recipients refused for good
                db,
                "state = 'sent', last_error = v.error, recipients = NULL, owner = NULL,"
                " lease_expires = NULL, updated_at = ?",
                (at,),
                [(o.job.id, o.job.token, at, o.error) for o in by_action[Action.COMPLETE]
                 if o.error],
            )  # fmt: skip
            # A sent email's body is not kept (unless asked): the record says what happened
            # to it, and a leaked file then holds no mail that went out.
            if not self.options.retain_sent_payloads:
                _delete_bodies(db, settled)
            fates: dict[str, tuple[State, float, str | None]] = {}
            settled += self._reschedule(db, by_action[Action.RETRY], at, fates)
            settled += self._reschedule(db, by_action[Action.DEFER], at, fates)
            settled += self._update_leased(
                db,
                "state = 'dead', last_error = v.error, owner = NULL, lease_expires = NULL,"
                " updated_at = ?",
                (at,),
                [(o.job.id, o.job.token, at, o.error) for o in by_action[Action.BURY]],
            )
            # Released mail keeps its place in its lane: available_at is left as it was.
            settled += self._update_leased(
                db,
                "state = 'queued', attempts = attempts - 1, owner = NULL, lease_expires = NULL,"
                " updated_at = ?",
                (at,),
                [(o.job.id, o.job.token) for o in by_action[Action.RELEASE]],
            )
            done = set(settled)
            if self.options.audit:
                events = [
                    e for o in outcomes if o.job.id in done for e in _settle_events(o, at, fates)
                ]
                privacy.write_events(db, events)
            dead = [o.job.id for o in by_action[Action.BURY] if o.job.id in done]
            dead += [i for i, (state, _, _) in fates.items() if state is State.DEAD and i in done]
            self._drop_dead_payloads(db, dead)
        return settled

    def _drop_dead_payloads(self, db: sqlite3.Connection, ids: Sequence[str]) -> None:
        """A dead message's body goes with its death when no requeue window keeps it."""
        if self.options.dead_payload_retention != 0 or not ids:
            return
        dead: list[str] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            dead += [row[0] for row in db.execute(
                "UPDATE messages SET recipients = NULL"
                f" WHERE id IN ({', '.join('?' * len(chunk))}) AND state = 'dead' RETURNING id",
                chunk,
            )]  # fmt: skip
        _delete_bodies(db, dead)

    def _reschedule(
        self,
        db: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        at: float,
        fates: dict[str, tuple[State, float, str | None]],
    ) -> list[str]:
        """Retry or defer each message to its due time, or bury it (as settle.lua does):
        a retry when that is at or past its expires_at or its explicit max_attempts are
        spent; a deferral, whose attempt is given back, only past its expires_at."""
        held = self._held(db, outcomes)
        rows: list[tuple[Any, ...]] = []
        for o in outcomes:
            row = held.get(o.job.id)
            if row is None or row[0] != o.job.token:
                continue  # a stale lease: skipped below as well
            _, attempts, max_attempts, enqueued_at, expires_at, last_error = row
            tried = Tried(attempts=attempts, max_attempts=max_attempts or None,
                          enqueued_at=enqueued_at, expires_at=expires_at,
                          last_error=last_error)  # fmt: skip
            due = at + o.delay
            if o.action is Action.DEFER:
                then = after_deferral(tried, due, o.error)
            else:
                then = after_retry(tried, due, at, o.error)
            state = State.DEAD if then.dead else State.RETRYING
            fates[o.job.id] = (state, due, then.error)
            left = " ".join(o.recipients) if o.recipients else None
            rows.append((o.job.id, o.job.token, due, then.error, state.value, then.attempts, left))
        return self._update_leased(
            db,
            "state = v.state, attempts = v.attempts, available_at = v.due, last_error = v.error,"
            " recipients = coalesce(v.recipients, messages.recipients),"
            " owner = NULL, lease_expires = NULL, updated_at = ?",
            (at,),
            rows,
        )

    @staticmethod
    def _held(db: sqlite3.Connection, outcomes: Sequence[Outcome]) -> dict[str, tuple[Any, ...]]:
        """id → (token, attempts, max_attempts, enqueued_at, expires_at, last_error) of the
        leased ones among ``outcomes``."""
        ids = [o.job.id for o in outcomes]
        held: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for row in db.execute(
                "SELECT id, token, attempts, max_attempts, enqueued_at, expires_at, last_error"
                " FROM messages"
                f" WHERE state = 'leased' AND id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                held[row[0]] = row[1:]
        return held

    @staticmethod
    def _update_leased(
        db: sqlite3.Connection,
        assignments: str,
        params: tuple[Any, ...],
        rows: Sequence[tuple[Any, ...]],
    ) -> list[str]:
        """Update the rows whose (id, token) still hold the lease; returns their ids.

        ``rows`` are (id, token[, due, error[, state, attempts[, recipients]]]) and are visible to
        ``assignments`` as ``v.*``.
        """
        done: list[str] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            width = len(chunk[0])
            names = ", ".join(
                f"column{i + 1} AS {name}" for i, name in enumerate(_VALUE_NAMES[:width])
            )
            values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
            sql = (
                f"UPDATE messages SET {assignments}"
                f" FROM (SELECT {names} FROM (VALUES {values})) AS v"
                " WHERE messages.id = v.id AND messages.token = v.token"
                " AND messages.state = 'leased' RETURNING messages.id"
            )
            flat = [value for row in chunk for value in row]
            done += [row[0] for row in db.execute(sql, (*params, *flat))]
        return done

    # -- housekeeping -------------------------------------------------------------------
    def _reap_expired(self, when: float | None, limit: int) -> int:
        at = _local(when)
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
        tenants = _tenants(db, ids)
        events = [(i, tenants[i], at, Kind.REQUEUED.value, detail_text(why="lease expired"))
                  for _, i in back]  # fmt: skip
        events += [(i, tenants[i], at, Kind.DEAD.value, detail_text(error=error))
                   for error, _, i in dead]  # fmt: skip
        privacy.write_events(db, events)

    def _promote_due(self, when: float | None, limit: int) -> int:
        with self._write() as db:
            return self._promote(db, _local(when), limit)

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
        at = _local(when)
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
        at = _local(when)
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
        at = _local(when)
        cancelled: list[tuple[str, str]] = []
        with self._write() as db:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                cancelled += db.execute(
                    "UPDATE messages SET state = 'cancelled', updated_at = ?"
                    f" WHERE id IN ({', '.join('?' * len(chunk))})"
                    " AND state IN ('queued', 'scheduled', 'retrying') RETURNING id, tenant",
                    (at, *chunk),
                ).fetchall()
            if self.options.audit:
                privacy.write_events(
                    db, [(i, t, at, Kind.CANCELLED.value, "{}") for i, t in cancelled]
                )
        return [message_id for message_id, _ in cancelled]

    def _purge_expired(self, when: float | None, limit: int) -> int:
        before = _local(when) - self.options.retention
        final = ", ".join(f"'{state.value}'" for state in FINAL_STATES)
        with self._write() as db:
            self._drop_old_dead_payloads(db, _local(when), limit)
            gone = [row[0] for row in db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                f" WHERE state IN ({final}) AND updated_at < ? LIMIT ?) RETURNING id",
                (before, limit),
            )]  # fmt: skip
            _delete_bodies(db, gone)
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
        for start in range(0, len(gone), _CHUNK):
            chunk = gone[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            db.execute(f"UPDATE messages SET recipients = NULL WHERE id IN ({marks})", chunk)

    def _purge_audit(self, when: float | None, limit: int) -> int:
        with self._write() as db:
            return privacy.purge_audit(db, _local(when) - self.options.audit_retention, limit)

    def _purge_preview(self, when: float | None) -> dict[str, int]:
        at = _local(when)
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
            counts = privacy.erase(db, recipient_hash, tenant, _local(when), self.options.audit)
        if counts.erased:  # the old pages, zeroed in the file, leave the write-ahead log too
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    # -- reads --------------------------------------------------------------------------
    def _get(self, message_id: str) -> MessageInfo | None:
        rows = self._read(f"SELECT {_INFO_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return _info(rows[0]) if rows else None

    def _batch_members(self, batch_id: str) -> list[BatchMember]:
        rows = self._read(
            f"SELECT {_INFO_COLUMNS}, b.payload FROM messages m LEFT JOIN bodies b USING (id)"
            " WHERE batch_id = ? ORDER BY id",
            (batch_id,),
        )
        # A sent or erased message keeps an empty payload: nothing to read.
        return [BatchMember(info=_info(row[:-1]), payload=row[-1] or None) for row in rows]

    def _stats(
        self, when: float | None, tenant: str | None
    ) -> tuple[dict[tuple[Lane, State], int], dict[Lane, float], float]:
        at = _local(when)
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
            (_local(when) + seconds,),
        )
        return {Lane(lane): n for lane, n in rows}

    def _ceremonies(
        self, within_s: float, limit: int, when: float | None
    ) -> list[tuple[float, int]]:
        at = _local(when)
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
        at = _local(when)
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


def _accepted(
    message_id: str, message: NewMessage, at: float, scheduled_for: float | None
) -> list[EventRow]:
    detail = detail_text(tenant=message.tenant, lane=message.lane.value,
                         rcpt=list(message.recipient_hashes) or None,
                         **dict(message.origin or {}))  # fmt: skip
    events = [(message_id, message.tenant, at, Kind.ACCEPTED.value, detail)]
    if scheduled_for is not None:
        due = detail_text(due=scheduled_for)
        events.append((message_id, message.tenant, at, Kind.SCHEDULED.value, due))
    return events


def _lease_event(row: tuple[Any, ...], worker: str, at: float) -> EventRow:
    """A row _take returned: leased, or buried for its age on the way."""
    message_id, attempts, tenant, state = row[0], row[3], row[6], row[9]
    if state == State.DEAD:
        return (message_id, tenant, at, Kind.DEAD.value, detail_text(error=expired(None)))
    return (message_id, tenant, at, Kind.LEASED.value, detail_text(worker=worker, attempt=attempts))


def _settle_events(
    o: Outcome, at: float, fates: dict[str, tuple[State, float, str | None]]
) -> list[EventRow]:
    """The events one settled outcome writes: its attempt, then what became of it."""
    job = o.job
    if o.action is Action.RELEASE:
        return [(job.id, job.tenant, at, Kind.RELEASED.value, "{}")]
    fate = fates.get(job.id)
    if o.action is Action.DEFER:
        assert fate is not None
        if fate[0] is State.DEAD:
            return [(job.id, job.tenant, at, Kind.DEAD.value, detail_text(error=fate[2]))]
        return [(job.id, job.tenant, at, Kind.DEFERRED.value, detail_text(due=fate[1]))]
    events = [(job.id, job.tenant, at, Kind.ATTEMPT.value, attempt_detail(o))]
    if o.action is Action.COMPLETE:
        events.append((job.id, job.tenant, at, Kind.SENT.value, "{}"))
    elif o.action is Action.BURY or (fate and fate[0] is State.DEAD):
        error = fate[2] if fate else o.error
        events.append((job.id, job.tenant, at, Kind.DEAD.value, detail_text(error=error)))
    else:
        assert fate is not None
        events.append((job.id, job.tenant, at, Kind.RETRIED.value, detail_text(due=fate[1])))
    return events


def _by_id(db: sqlite3.Connection, select: str, ids: Sequence[str]) -> dict[str, Any]:
    """``select`` (of id and one value) for these ids, in chunks: id → value."""
    found: dict[str, Any] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update(db.execute(f"{select} WHERE id IN ({marks})", chunk).fetchall())
    return found


def _bodies(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, bytes]:
    return _by_id(db, "SELECT id, payload FROM bodies", ids)


def _tenants(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    return _by_id(db, "SELECT id, tenant FROM messages", ids)


def _delete_bodies(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        db.execute(f"DELETE FROM bodies WHERE id IN ({', '.join('?' * len(chunk))})", chunk)


def _info(row: Sequence[Any]) -> MessageInfo:
    (message_id, state, lane, tenant, attempts, max_attempts, enqueued_at, updated_at,
     available_at, last_error, idempotency_key, expires_at, batch_id) = row  # fmt: skip
    return MessageInfo(
        id=message_id,
        state=State(state),
        lane=Lane(lane),
        tenant=tenant,
        attempts=attempts,
        max_attempts=max_attempts or None,
        enqueued_at=enqueued_at,
        updated_at=updated_at,
        available_at=available_at,
        last_error=last_error,
        idempotency_key=idempotency_key,
        expires_at=math.inf if expires_at is None else expires_at,
        batch_id=batch_id,
    )


def _local(at: float | None) -> float:
    """The injected clock's time, or this machine's: one file has one machine's clock."""
    return now() if at is None else at


class _Busy(Exception):
    """Another writer holds the lock, and try_settle does not wait for it."""


class SQLiteCalls(BrokerCalls):
    """Settle on the event loop when the write lock is free, else on a thread (where the
    wait for it stalls no event loop). An empty poll is answered on the loop from a reader
    of its own, so the express loop can look for critical mail every few milliseconds for
    a few microseconds each, with no thread hop (SQLite has no one to announce it)."""

    def __init__(self, broker: SQLiteBroker) -> None:
        super().__init__(broker)
        self.sqlite = broker
        self._reader: sqlite3.Connection | None = None

    async def lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        lanes: Collection[Lane] | None = None,
        *,
        request_id: str | None = None,
    ) -> list[Job]:
        if not self._may_find_work(check_lease(max_n, lease_s, lanes, request_id)):
            return []
        return await super().lease(worker, max_n, lease_s, lanes, request_id=request_id)

    def _may_find_work(self, lanes: frozenset[Lane]) -> bool:
        try:
            if self._reader is None:
                self._reader = self.sqlite.reader()
            return self.sqlite._work_waits(_local(self.sqlite._at()), lanes, self._reader)
        except (sqlite3.Error, BrokerError):
            return True  # the lease itself will say what is wrong

    async def wait_for_critical(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, CRITICAL_POLL_S))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def settle(self, outcomes: Sequence[Outcome]) -> list[str]:
        settled = self.sqlite.try_settle(outcomes)
        return await super().settle(outcomes) if settled is None else settled
