"""The broker contract: what every queue backend does, and the records it speaks in.

Public methods here do the shared checks and bookkeeping, then call the ``_``-prefixed
method that each backend implements (the SAQ shape). Payloads are opaque bytes: the broker
never parses an email.

Time is the broker's: timestamps are epoch seconds on one clock that every process shares.
Redis reads its own (``TIME``, inside each script), so a worker whose wall clock is off
neither reaps live leases nor schedules wrongly; SQLite, on one machine, reads the local
clock. A clock injected at construction (tests: ``ManualClock``) replaces both, and the
backends are handed its time as ``at``; otherwise ``at`` is None and the backend reads its own.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field, replace
from enum import StrEnum

from emailq.broker.calls import BrokerCalls
from emailq.broker.expiry import DEFAULT_MAX_AGE
from emailq.clock import Clock, now
from emailq.errors import BrokerError, EmailqError
from emailq.lanes import DEFAULT_WEIGHTS, LANE_ORDER, Lane
from emailq.privacy.audit import DEFAULT_AUDIT_RETENTION, AuditEvent
from emailq.privacy.erasure import ErasureCounts
from emailq.privacy.sealing import Sealer, SealError

log = logging.getLogger(__name__)

DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0
DEFAULT_RETENTION = 30 * 24 * 3600.0  # a finished message's record (metadata, no body)
SEALED_RETRY_S = 60.0  # a payload whose key is missing is tried again this often
CEREMONY_SAMPLE = 10_000  # live wedding messages Broker.ceremonies looks at, soonest first
PURGE_CHUNK = 2_000  # records per purge transaction / script call: short, so mail moves between
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # the 10 MB message limit plus JSON/base64 overhead


class State(StrEnum):
    QUEUED = "queued"  # ready to lease now
    SCHEDULED = "scheduled"  # waits for its send_at
    LEASED = "leased"  # owned by a worker until its lease expires
    RETRYING = "retrying"  # waits for its retry delay
    SENT = "sent"
    DEAD = "dead"  # gave up: permanent failure, expired, or explicit attempts spent
    CANCELLED = "cancelled"


# States whose messages are still the queue's to deliver.
LIVE_STATES: tuple[State, ...] = (
    State.QUEUED,
    State.SCHEDULED,
    State.LEASED,
    State.RETRYING,
)
FINAL_STATES: tuple[State, ...] = (State.SENT, State.DEAD, State.CANCELLED)


DEFAULT_PATIENCE_S = 60.0  # a Redis failover's length


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message to enqueue: the payload, then everything else by name."""

    payload: bytes
    _: KW_ONLY
    lane: Lane = Lane.STANDARD
    tenant: str = "default"
    idempotency_key: str | None = None
    send_at: float | None = None  # epoch seconds; None or past means now
    # Retried until this time (epoch seconds); None: the lane's maximum age
    # (BrokerOptions.max_age) after it is first due (now, or its send_at).
    expires_at: float | None = None
    max_attempts: int | None = None  # None: no limit by count, only by age
    # Keyed hashes of every address it names (emailq.privacy.erasure): the erasure index and
    # the audit trail's "rcpt"; the raw contract may leave them out.
    recipient_hashes: tuple[str, ...] = ()
    # What the audit trail's "accepted" event says of its origin: API key id, policy reason.
    origin: Mapping[str, str] | None = field(default=None, compare=False)
    # The guest list it was sent with (emailq.batches); the broker indexes it so a batch's
    # messages are found without a scan.
    batch_id: str | None = None
    # Wedding mail's ceremony (epoch seconds): the broker indexes it while the message is
    # live, so the autoscaler sees which ceremonies still wait for mail (Broker.ceremonies).
    ceremony_at: float | None = None
    # Built from a validated Email (emailq.intake.to_new_message): the door need not look.
    validated: bool = field(default=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A leased message. ``token`` fences it: settling with a stale token is refused."""

    id: str
    token: int
    lane: Lane
    payload: bytes
    attempts: int  # including this one
    max_attempts: int | None  # None: retried until expires_at, however many times
    enqueued_at: float
    tenant: str
    expires_at: float = math.inf  # inf: stored before messages expired (emailq < 0.3)
    # After a partial delivery, the envelope recipients still to be tried; None: all.
    recipients: tuple[str, ...] | None = None

    @property
    def last_attempt(self) -> bool:
        """Whether a retry would bury it for its count (its age may bury it sooner)."""
        return self.max_attempts is not None and self.attempts >= self.max_attempts


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageInfo:
    """What the broker knows of one message."""

    id: str
    state: State
    lane: Lane
    tenant: str
    attempts: int
    max_attempts: int | None
    enqueued_at: float
    updated_at: float
    available_at: float
    last_error: str | None
    idempotency_key: str | None
    expires_at: float = math.inf
    batch_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchMember:
    """One message of a batch, with its payload while the broker still holds it (opened,
    when payloads are sealed); None once it was dropped (sent, erased, purged)."""

    info: MessageInfo
    payload: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedEvent:
    """An audit event as the feed hands it out, in the order they were written, with where
    to read on from (``cursor``) and what a webhook needs of its message."""

    cursor: str
    tenant: str
    batch_id: str | None
    event: AuditEvent


class Action(StrEnum):
    COMPLETE = "complete"  # delivered
    RETRY = "retry"  # failed for now: wait ``delay``; buried when that is past expires_at
    # or its explicit max_attempts are spent
    BURY = "bury"  # failed for good
    RELEASE = "release"  # not tried (shutdown): queued again in its place, attempt not counted
    # Not tried, and not to be tried for ``delay`` (its provider is down or refused our
    # credentials, a rate limit said wait): retrying again, the attempt not counted,
    # ``error`` (when given) kept as its last error; buried only past its expires_at.
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one leased message ended; a batch of these is settled in one call."""

    job: Job
    action: Action
    delay: float = 0.0
    error: str | None = None  # for COMPLETE: a note kept with it (recipients refused for good)
    # RETRY after a partial delivery: the only recipients its next attempt goes to.
    recipients: tuple[str, ...] | None = None
    # For the audit trail's attempt event: who tried (a provider's name) and its message id.
    provider: str | None = None
    provider_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadFilter:
    """Which dead messages :meth:`Broker.requeue_dead` takes; None: any."""

    since: float | None = None  # died at or after (epoch seconds)
    lane: Lane | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class LaneStats:
    counts: dict[State, int]
    oldest_age: float  # seconds the oldest queued (ready) message has waited; 0 when none


@dataclass(frozen=True, slots=True)
class Stats:
    lanes: dict[Lane, LaneStats]
    taken_at: float

    def count(self, state: State, lane: Lane | None = None) -> int:
        lanes = [lane] if lane else list(self.lanes)
        return sum(self.lanes[x].counts.get(state, 0) for x in lanes)

    @property
    def backlog(self) -> int:
        """Messages not yet delivered: everything in a live state."""
        return sum(self.count(s) for s in LIVE_STATES)


@dataclass(slots=True)
class BrokerOptions:
    lane_weights: Mapping[Lane, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    retention: float = DEFAULT_RETENTION  # how long sent/dead/cancelled records are kept
    # How long a lane's mail is retried (the default expires_at); every lane must be named.
    max_age: Mapping[Lane, float] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE))
    # Refuse payloads that are not emails at enqueue instead of burying them at delivery.
    # A Deployment's broker checks; the raw contract (backends, tests) takes opaque bytes.
    check_payloads: bool = False
    # Keep a sent message's payload (body, recipients) until its record is purged; by default
    # it is dropped when the message is sent.
    retain_sent_payloads: bool = False
    # How long a call rides out an unreachable backend before it fails as BrokerUnavailable:
    # a worker waits a Redis failover out; the API answers 503 after a few seconds.
    patience_s: float = DEFAULT_PATIENCE_S
    # Keep a dead message's payload for this many seconds (requeue_dead needs it); 0: drop
    # it when the message dies; None: as long as its record.
    dead_payload_retention: float | None = None
    # Write the audit trail (emailq.privacy.audit) in the calls that change state, and keep
    # it this long after the message was accepted.
    audit: bool = True
    audit_retention: float = DEFAULT_AUDIT_RETENTION
    # Seal payloads at rest (emailq.privacy.sealing): at enqueue, and opened at lease.
    sealer: Sealer | None = None

    def __post_init__(self) -> None:
        missing = [lane.value for lane in LANE_ORDER if lane not in self.max_age]
        if missing:
            raise ValueError(f"max_age must name every lane; missing {', '.join(missing)}")
        if not all(0 < age < math.inf for age in self.max_age.values()):
            raise ValueError("every lane's max_age must be a positive number of seconds")


class Broker(abc.ABC):
    """A durable queue of email payloads in priority lanes."""

    def __init__(self, options: BrokerOptions | None = None, clock: Clock | None = None) -> None:
        """``clock``: None (or :func:`emailq.clock.now`, the wall clock) for the broker's own
        clock; any other callable replaces it (tests inject a ``ManualClock``)."""
        self.options = options or BrokerOptions()
        self._injected = clock if clock is not None and clock is not now else None
        # For this process's own timing (metrics); compare stored times with now() instead.
        self.clock: Clock = self._injected or now

    def now(self) -> float:
        """The broker's current time: Redis ``TIME``, the local clock for SQLite, or the
        injected clock."""
        if self._injected is not None:
            return self._injected()
        with self._backend_errors():
            return self._now()

    def _at(self) -> float | None:
        """The time handed to a backend: the injected clock's, else None (its own)."""
        return None if self._injected is None else self._injected()

    # -- intake -------------------------------------------------------------------------
    def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Store the messages, all or none; returns their ids in order.

        A message whose (tenant, idempotency key) was seen within the idempotency window
        gets the first message's id, and no second copy is stored.
        """
        for index, message in enumerate(messages):
            _check_message(index, message)
            if message.batch_id is not None and not 0 < len(message.batch_id) <= 64:
                raise ValueError(f"messages[{index}].batch_id must be 1 to 64 characters")
            if self.options.check_payloads and not message.validated:
                _check_payload(index, message.payload)
        if not messages:
            return []
        sealer = self.options.sealer
        if sealer is not None:
            messages = [replace(m, payload=sealer.seal(m.payload)) for m in messages]
        with self._backend_errors():
            return self._enqueue_many(messages, self._at())

    def enqueue(self, message: NewMessage) -> str:
        return self.enqueue_many([message])[0]

    # -- workers ------------------------------------------------------------------------
    def lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        lanes: Collection[Lane] | None = None,
        *,
        request_id: str | None = None,
    ) -> list[Job]:
        """Take up to ``max_n`` ready messages, critical first, for ``lease_s`` seconds.

        Due scheduled and retrying messages are promoted first, in the same step. ``lanes``
        restricts the lease to those lanes (a worker's express loop takes only critical).

        A call repeated with the same ``request_id`` while its leases last returns the same
        jobs (those still leased with the same tokens) instead of leasing more: a lease
        whose reply was lost and that the client sent again leaves nothing orphaned. The
        Redis broker makes up an id when none is given, so its client's own retries are
        safe; SQLite has no lost replies and ignores it.
        """
        chosen = check_lease(max_n, lease_s, lanes, request_id)
        with self._backend_errors():
            jobs = self._lease(worker, max_n, lease_s, self._at(), chosen, request_id)
        return self._open_all(jobs)

    def _open_all(self, jobs: list[Job]) -> list[Job]:
        return jobs if self.options.sealer is None else self._opened(jobs, self.options.sealer)

    def _opened(self, jobs: list[Job], sealer: Sealer) -> list[Job]:
        """The jobs with their payloads opened. One that does not open (its key is missing)
        is not lost: it goes back as retrying, its attempt given back, and is tried again
        every minute until its key is back (or it expires)."""
        opened, shut = [], []
        for job in jobs:
            try:
                opened.append(replace(job, payload=sealer.open(job.payload)))
            except SealError as error:
                shut.append(Outcome(job, Action.DEFER, SEALED_RETRY_S, f"sealed: {error}"))
        if shut:
            log.error("%d payloads cannot be opened and wait: %s", len(shut), shut[0].error)
            with self._backend_errors():
                self._settle(shut, self._at())
        return opened

    def heartbeat(self, jobs: Sequence[Job], lease_s: float) -> list[str]:
        """Extend the leases still held; returns the ids whose lease was extended."""
        if not jobs:
            return []
        with self._backend_errors():
            return self._heartbeat(jobs, lease_s, self._at())

    def settle(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Apply a batch of outcomes; returns the ids settled (stale leases are skipped).

        A retry buries the message instead (its error saying so: :mod:`emailq.broker.expiry`) when
        it would fall due at or after its ``expires_at``, or when its explicit
        ``max_attempts`` are spent; a deferral only when it would fall due at or after its
        ``expires_at``.
        """
        check_outcomes(outcomes)
        if not outcomes:
            return []
        with self._backend_errors():
            return self._settle(outcomes, self._at())

    def calls(self) -> BrokerCalls:
        """Lease, settle and heartbeat for one event loop (close them in it): on threads, unless
        the backend has an asyncio client (:mod:`emailq.broker.calls`)."""
        return BrokerCalls(self)

    def complete(self, jobs: Sequence[Job]) -> list[str]:
        return self.settle([Outcome(job, Action.COMPLETE) for job in jobs])

    def retry(self, job: Job, delay: float, error: str) -> bool:
        return bool(self.settle([Outcome(job, Action.RETRY, delay, error)]))

    def bury(self, job: Job, error: str) -> bool:
        return bool(self.settle([Outcome(job, Action.BURY, error=error)]))

    def release(self, jobs: Sequence[Job]) -> list[str]:
        return self.settle([Outcome(job, Action.RELEASE) for job in jobs])

    def defer(self, jobs: Sequence[Job], delay: float, error: str | None = None) -> list[str]:
        return self.settle([Outcome(job, Action.DEFER, delay, error) for job in jobs])

    # -- housekeeping -------------------------------------------------------------------
    def reap_expired(self, limit: int = 1000) -> int:
        """Return messages whose lease expired to their lane, or bury them when they are
        past their ``expires_at`` or their explicit attempts are spent; returns how many
        were reaped."""
        with self._backend_errors():
            return self._reap_expired(self._at(), limit)

    def promote_due(self, limit: int = 1000) -> int:
        """Make scheduled and retrying messages whose time has come ready to lease."""
        with self._backend_errors():
            return self._promote_due(self._at(), limit)

    def requeue_dead(
        self,
        ids: Sequence[str] | None = None,
        *,
        since: float | None = None,
        lane: Lane | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> int:
        """Queue dead messages again, with fresh attempts and a fresh expires_at (now + their
        lane's maximum age); returns how many. ``ids`` names them, or None takes the dead
        (longest dead first); either way only those that died at or after ``since`` (epoch
        seconds), in ``lane`` and of ``tenant``, when given, and at most ``limit``."""
        if since is not None and not math.isfinite(since):
            raise ValueError("since must be a finite timestamp")
        found = DeadFilter(since=since, lane=lane, tenant=tenant)
        with self._backend_errors():
            return self._requeue_dead(ids, found, limit, self._at())

    def cancel(self, message_id: str) -> bool:
        """Cancel a message that no worker holds yet; False when it is leased, final or unknown."""
        with self._backend_errors():
            return self._cancel(message_id, self._at())

    def cancel_many(self, ids: Sequence[str]) -> list[str]:
        """Cancel those of ``ids`` no worker holds yet; returns the ids cancelled."""
        with self._backend_errors():
            return self._cancel_many(ids, self._at()) if ids else []

    def _cancel_many(self, ids: Sequence[str], at: float | None) -> list[str]:
        """One call per message; a backend may do them in one transaction."""
        return [message_id for message_id in ids if self._cancel(message_id, at)]

    def batch_members(self, batch_id: str) -> list[BatchMember]:
        """Every message (still on record) sent with ``batch_id``, oldest first, from the
        broker's batch index (no scan)."""
        with self._backend_errors():
            members = self._batch_members(batch_id)
        sealer = self.options.sealer
        if sealer is None:
            return members
        return [replace(m, payload=_opened_or_none(sealer, m.payload)) for m in members]

    def purge_expired(self, limit: int = 1_000_000) -> int:
        """Delete final records (sent, dead, cancelled) older than the retention period, and
        audit events older than theirs; returns how many records went.

        In chunks of :data:`PURGE_CHUNK`, each a short transaction (script call) of its own,
        until none is left or ``limit`` went: one call a minute keeps up with far more than
        200,000 emails a minute, and never holds the queue for long."""
        removed = 0
        with self._backend_errors():
            while removed < limit:
                chunk = min(PURGE_CHUNK, limit - removed)
                done = self._purge_expired(self._at(), chunk)
                done += self._purge_audit(self._at(), chunk) if self.options.audit else 0
                removed += done
                if done < chunk:
                    break
        return removed

    def purge_preview(self) -> dict[str, int]:
        """What :meth:`purge_expired` would delete now, by kind (``emailq purge --dry-run``)."""
        with self._backend_errors():
            return self._purge_preview(self._at())

    def reseal(self, batch: int = 500) -> int:
        """Seal every stored payload with the current key (``emailq rotate-keys``): those
        sealed with an older key, and those stored before sealing was on; returns how many.
        A payload that changed meanwhile (sent, erased) is left as it now is."""
        sealer = self.options.sealer
        if sealer is None:
            raise ValueError("rotate-keys needs EMAILQ_ENCRYPTION_KEYS")
        done, cursor = 0, ""
        while True:
            with self._backend_errors():
                cursor, stored = self._stored_payloads(cursor, batch)
                for message_id, payload in stored:
                    if sealer.needs_resealing(payload):
                        fresh = sealer.seal(sealer.open(payload))
                        done += self._swap_payload(message_id, payload, fresh)
            if not cursor:
                return done

    # -- the audit trail and erasure (emailq.privacy) -----------------------------------
    def events(self, message_id: str) -> list[AuditEvent]:
        """One message's audit trail, oldest first."""
        with self._backend_errors():
            return self._events(message_id)

    def tenant_events(
        self, tenant: str, since: float, until: float, limit: int = 100_000
    ) -> list[AuditEvent]:
        """A tenant's audit events from ``since`` until before ``until`` (epoch seconds)."""
        with self._backend_errors():
            return self._tenant_events(tenant, since, until, limit)

    def find_recipient(self, recipient_hash: str, tenant: str | None = None) -> list[MessageInfo]:
        """The messages (still on record) that named an address, by its keyed hash."""
        with self._backend_errors():
            return self._find_recipient(recipient_hash, tenant)

    def erase_recipient(self, recipient_hash: str, tenant: str | None = None) -> ErasureCounts:
        """Cancel queued mail that names the address and remove its body, recipients and
        idempotency key from every record that does (live or finished); each gets an
        ``erased`` event holding only the hash. Idempotent: a second call erases nothing."""
        with self._backend_errors():
            return self._erase_recipient(recipient_hash, tenant, self._at())

    def events_after(self, cursor: str, limit: int = 1000) -> list[FeedEvent]:
        """Every tenant's outcome events (``FEED_KINDS``: sent, retried, dead, cancelled)
        written after ``cursor`` ("" from the oldest kept), in the order they were written:
        what webhooks are made from. Events of messages no longer on record are skipped."""
        with self._backend_errors():
            return self._events_after(cursor, limit)

    # -- what the autoscaler asks -------------------------------------------------------
    def due_within(self, seconds: float) -> dict[Lane, int]:
        """Scheduled and retrying messages due within ``seconds`` from now (or already due),
        per lane: mail known to be coming. Redis looks at the first 20,000 due and
        splits a larger total by their lanes' shares."""
        if not 0 <= seconds < math.inf:
            raise ValueError("seconds must be a finite number >= 0")
        with self._backend_errors():
            return self._due_within(seconds, self._at())

    def ceremonies(self, within_s: float, limit: int = CEREMONY_SAMPLE) -> list[tuple[float, int]]:
        """Ceremonies from now to ``within_s`` ahead that live mail (queued, scheduled, leased,
        retrying) is for: (ceremony time, messages), soonest first. Bounded: it looks at the
        ``limit`` soonest messages only (an index range, never a scan of the queue), so a
        larger total is undercounted from its far end."""
        if not 0 <= within_s < math.inf:
            raise ValueError("within_s must be a finite number >= 0")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._backend_errors():
            return self._ceremonies(within_s, limit, self._at())

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``holder``, or renew it, for ``ttl_s`` seconds on the
        broker's clock; False while another holder's lease lasts. One autoscaler per queue."""
        if not 0 < len(name) <= 100 or not 0 < len(holder) <= 200:
            raise ValueError("a lease name is 1 to 100 characters, a holder 1 to 200")
        if not 0 < ttl_s < math.inf:
            raise ValueError("ttl_s must be a positive number of seconds")
        with self._backend_errors():
            return self._hold_lease(name, holder, ttl_s, self._at())

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if ``holder`` holds it (a stopping autoscaler hands over at once)."""
        with self._backend_errors():
            self._release_lease(name, holder)

    # -- reads --------------------------------------------------------------------------
    def get(self, message_id: str) -> MessageInfo | None:
        with self._backend_errors():
            return self._get(message_id)

    def stats(self, tenant: str | None = None) -> Stats:
        """Counts per lane and state, and how long each lane's oldest ready message has
        waited: every tenant's, or ``tenant``'s alone (read from counters and per-tenant
        ready indexes, not by counting its messages)."""
        with self._backend_errors():
            counts, oldest, taken_at = self._stats(self._at(), tenant)
        lanes = {
            lane: LaneStats(
                counts={s: counts.get((lane, s), 0) for s in State},
                oldest_age=max(0.0, taken_at - oldest[lane]) if lane in oldest else 0.0,
            )
            for lane in LANE_ORDER
        }
        return Stats(lanes=lanes, taken_at=taken_at)

    def ping(self) -> bool:
        """True when the backend answers."""
        with self._backend_errors():
            return self._ping()

    def check(self) -> str | None:
        """None when the broker can take writes now; otherwise why not, in a few words
        ("full: Redis used_memory 2.0 MB ≥ maxmemory 2.0 MB", "unreachable: …",
        "disk full: …"), for readiness to report. Never raises."""
        try:
            return self._check()
        except Exception as error:  # a check reports, it does not raise
            return f"unreachable: {type(error).__name__}: {error}"

    def close(self) -> None:  # noqa: B027 - backends without resources need not override
        """Release connections."""

    @contextmanager
    def _backend_errors(self) -> Iterator[None]:
        """Raise the backend's own errors as emailq's (:meth:`_translate`)."""
        try:
            yield
        except EmailqError:
            raise
        except Exception as error:
            translated = self._translate(error)
            if translated is None:
                raise
            raise translated from error

    def _translate(self, error: Exception) -> BrokerError | None:
        """The emailq error for a backend's exception; None for one that is not the
        backend's (a ValueError of ours, a bug) and must propagate as it is."""
        return None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a backend implements ------------------------------------------------------
    @abc.abstractmethod
    def _enqueue_many(self, messages: Sequence[NewMessage], at: float | None) -> list[str]: ...

    @abc.abstractmethod
    def _lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        at: float | None,
        lanes: frozenset[Lane],
        request_id: str | None,
    ) -> list[Job]: ...

    @abc.abstractmethod
    def _heartbeat(self, jobs: Sequence[Job], lease_s: float, at: float | None) -> list[str]: ...

    @abc.abstractmethod
    def _settle(self, outcomes: Sequence[Outcome], at: float | None) -> list[str]: ...

    @abc.abstractmethod
    def _reap_expired(self, at: float | None, limit: int) -> int: ...

    @abc.abstractmethod
    def _promote_due(self, at: float | None, limit: int) -> int: ...

    @abc.abstractmethod
    def _requeue_dead(
        self, ids: Sequence[str] | None, only: DeadFilter, limit: int, at: float | None
    ) -> int: ...

    @abc.abstractmethod
    def _cancel(self, message_id: str, at: float | None) -> bool: ...

    @abc.abstractmethod
    def _purge_expired(self, at: float | None, limit: int) -> int:
        """Delete up to ``limit`` final records older than ``options.retention`` before
        ``at``, and drop dead payloads past ``options.dead_payload_retention``."""

    @abc.abstractmethod
    def _purge_audit(self, at: float | None, limit: int) -> int:
        """Delete up to ``limit`` messages' audit events older than ``audit_retention``."""

    @abc.abstractmethod
    def _purge_preview(self, at: float | None) -> dict[str, int]: ...

    @abc.abstractmethod
    def _stored_payloads(self, cursor: str, count: int) -> tuple[str, list[tuple[str, bytes]]]:
        """About ``count`` stored payloads after ``cursor`` ("" first), and the next cursor
        ("" when done)."""

    @abc.abstractmethod
    def _swap_payload(self, message_id: str, old: bytes, new: bytes) -> bool:
        """Replace a payload if it is still ``old``."""

    @abc.abstractmethod
    def _events(self, message_id: str) -> list[AuditEvent]: ...

    @abc.abstractmethod
    def _tenant_events(
        self, tenant: str, since: float, until: float, limit: int
    ) -> list[AuditEvent]: ...

    @abc.abstractmethod
    def _find_recipient(self, recipient_hash: str, tenant: str | None) -> list[MessageInfo]: ...

    @abc.abstractmethod
    def _erase_recipient(
        self, recipient_hash: str, tenant: str | None, at: float | None
    ) -> ErasureCounts: ...

    @abc.abstractmethod
    def _due_within(self, seconds: float, at: float | None) -> dict[Lane, int]: ...

    @abc.abstractmethod
    def _ceremonies(
        self, within_s: float, limit: int, at: float | None
    ) -> list[tuple[float, int]]: ...

    @abc.abstractmethod
    def _hold_lease(self, name: str, holder: str, ttl_s: float, at: float | None) -> bool: ...

    @abc.abstractmethod
    def _release_lease(self, name: str, holder: str) -> None: ...

    @abc.abstractmethod
    def _get(self, message_id: str) -> MessageInfo | None: ...

    @abc.abstractmethod
    def _batch_members(self, batch_id: str) -> list[BatchMember]: ...

    @abc.abstractmethod
    def _events_after(self, cursor: str, limit: int) -> list[FeedEvent]: ...

    @abc.abstractmethod
    def _stats(
        self, at: float | None, tenant: str | None
    ) -> tuple[dict[tuple[Lane, State], int], dict[Lane, float], float]:
        """Counts per (lane, state), per lane the time its oldest ready message became
        ready, and the time they were taken at."""

    @abc.abstractmethod
    def _now(self) -> float:
        """The backend's own clock."""

    @abc.abstractmethod
    def _ping(self) -> bool: ...

    @abc.abstractmethod
    def _check(self) -> str | None:
        """Why the backend cannot take writes now, or None (see :meth:`check`)."""

    @abc.abstractmethod
    def purge(self) -> None:
        """Delete everything this broker holds (tests and demos)."""


def _check_message(index: int, message: NewMessage) -> None:
    where = f"messages[{index}]"
    if not isinstance(message.payload, bytes):
        raise TypeError(f"{where}.payload must be bytes")
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{where}.payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    if not isinstance(message.lane, Lane):
        raise TypeError(f"{where}.lane must be a Lane")
    if message.max_attempts is not None and message.max_attempts < 1:
        raise ValueError(f"{where}.max_attempts must be at least 1 (or None: no limit)")
    if not message.tenant or len(message.tenant) > 128:
        raise ValueError(f"{where}.tenant must be 1 to 128 characters")
    key = message.idempotency_key
    if key is not None and not 0 < len(key) <= 256:
        raise ValueError(f"{where}.idempotency_key must be 1 to 256 characters")
    if message.send_at is not None and not math.isfinite(message.send_at):
        raise ValueError(f"{where}.send_at must be a finite timestamp")
    expires = message.expires_at
    if expires is not None and not math.isfinite(expires):
        raise ValueError(f"{where}.expires_at must be a finite timestamp")
    if expires is not None and message.send_at is not None and expires <= message.send_at:
        raise ValueError(f"{where}.expires_at must be after its send_at")


def _opened_or_none(sealer: Sealer, payload: bytes | None) -> bytes | None:
    """A payload to read (a batch's recipients): opened, or None when its key is missing."""
    if payload is None:
        return None
    try:
        return sealer.open(payload)
    except SealError:
        return None


def _check_payload(index: int, payload: bytes) -> None:
    from emailq.message import Email  # only brokers that check payloads need the email model

    try:
        Email.from_payload(payload)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        reason = error.errors()[0]["msg"] if hasattr(error, "errors") else str(error)
        raise ValueError(
            f"messages[{index}].payload is not an emailq email (build it with"
            f" Email.to_payload or Deployment.send): {reason}"
        ) from None


def check_outcomes(outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.delay < 0 or not math.isfinite(outcome.delay):
            raise ValueError(f"retry delay must be a finite number >= 0: {outcome.delay}")


def check_lease(
    max_n: int, lease_s: float, lanes: Collection[Lane] | None, request_id: str | None
) -> frozenset[Lane]:
    """A lease's arguments checked; returns the lanes it may take."""
    if max_n < 1:
        raise ValueError("max_n must be at least 1")
    if not lease_s > 0:
        raise ValueError("lease_s must be positive")
    if request_id is not None and not 0 < len(request_id) <= 200:
        raise ValueError("request_id must be 1 to 200 characters")
    chosen = frozenset(LANE_ORDER if lanes is None else lanes)
    if not chosen:
        raise ValueError("lanes must name at least one lane")
    return chosen
