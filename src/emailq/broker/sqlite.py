"""The embedded broker: one SQLite file (:mod:`emailq.broker.sqlite_file`), its hot path here.

Intake in one transaction per call; leases are one ``UPDATE … RETURNING`` per lane, so a
message can only be taken by one transaction; settles are fenced by each lease's token.
Housekeeping, the audit trail and the reads are in :mod:`emailq.broker.sqlite_records`.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from emailq.broker import sqlite_privacy as privacy
from emailq.broker.base import (
    Action,
    Job,
    NewMessage,
    Outcome,
    State,
    check_lease,
)
from emailq.broker.calls import BrokerCalls
from emailq.broker.expiry import Tried, after_deferral, after_retry, expired
from emailq.broker.sqlite_file import Busy
from emailq.broker.sqlite_privacy import EventRow
from emailq.broker.sqlite_records import SQLiteRecords
from emailq.broker.sqlite_rows import (
    CHUNK,
    accepted_events,
    bodies_of,
    delete_bodies,
    lease_event,
    local,
    per_chunk,
    settle_events,
)
from emailq.errors import BrokerError
from emailq.ids import new_id
from emailq.lanes import LANE_ORDER, Lane
from emailq.scheduling import allot

CRITICAL_POLL_S = 0.005  # the express loop's look for critical mail: ~20 µs on the loop
_JOB_COLUMNS = (  # what _take returns of each row; the body comes from bodies
    "id, token, lane, attempts, max_attempts, enqueued_at, tenant, available_at, expires_at,"
    " state, recipients"
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


class SQLiteBroker(SQLiteRecords):
    # -- intake -------------------------------------------------------------------------
    def _enqueue_many(self, messages: Sequence[NewMessage], when: float | None) -> list[str]:
        at = local(when)
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
                events += accepted_events(message_id, message, at, due if due > at else None)
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
        at = local(when)
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
                privacy.write_events(db, [lease_event(row, worker, at) for row in jobs])
            self._drop_dead_payloads(db, [row[0] for row in jobs if row[9] == State.DEAD])
            leased = [row for row in jobs if row[9] == State.LEASED]
            bodies = bodies_of(db, [row[0] for row in leased])
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
        at = local(when)
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
        except Busy:
            return None
        finally:
            self._wait_for_writers = True
            self._lock.release()

    def _settle(self, outcomes: Sequence[Outcome], when: float | None) -> list[str]:
        at = local(when)
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
                delete_bodies(db, settled)
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
                    e for o in outcomes if o.job.id in done for e in settle_events(o, at, fates)
                ]
                privacy.write_events(db, events)
            dead = [o.job.id for o in by_action[Action.BURY] if o.job.id in done]
            dead += [i for i, (state, _, _) in fates.items() if state is State.DEAD and i in done]
            self._drop_dead_payloads(db, dead)
        return settled

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
        rows = per_chunk(
            db,
            "SELECT id, token, attempts, max_attempts, enqueued_at, expires_at, last_error"
            " FROM messages WHERE state = 'leased' AND id IN ({marks})",
            [o.job.id for o in outcomes],
        )
        return {row[0]: row[1:] for row in rows}

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
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
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
            return self.sqlite._work_waits(local(self.sqlite._at()), lanes, self._reader)
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
