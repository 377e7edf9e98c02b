"""The worker: lease a batch → render → pass the rate limits → send → settle as it goes out.

A worker runs ``concurrency`` batch loops in one event loop, so one batch is being sent
while the next is leased and rendered, plus an express loop for critical mail with its own
provider connections. Its lease, settle and heartbeat go through ``Broker.calls()``: on
Redis's asyncio client; SQLite settles on the loop while its write lock is free and on a
thread otherwise. The rules it keeps (docs/architecture.md §5):

- **The fence reaches the wire** (:mod:`emailq.fence`): right before each message goes out
  the provider asks whether this process still holds its lease, by a deadline that
  heartbeats renew. A process that was paused past its lease sends nothing.
- **Settle as mail goes out** (:mod:`emailq.settling`): each outcome is settled in small
  groups as it is known, so a crash re-sends at most what was on the wire.
- **Every failure is one message's**: an error in rendering or sending one message is that
  message's outcome; the rest of the batch is unaffected. A message our own code keeps
  failing on is buried after ``poison_attempts``.
- **A provider's outage is not the mail's** (:mod:`emailq.outages`): refused connections
  or credentials pause the provider and put mail back without spending attempts.
- **No leases held while waiting**: mail a rate limit holds back goes back to the queue
  until the limit allows it, instead of waiting leased.

On stop, loops lease nothing more and their batches get ``shutdown_timeout`` to finish.
Past it the fence closes: nothing new goes on the wire, what was not sent is released, and
what is on the wire is waited for (up to ``wire_grace_s``) and settled, so a restart does
not send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emailq.broker import Action, Broker, Job, Outcome
from emailq.broker.calls import BrokerCalls
from emailq.fence import LeaseFence
from emailq.lanes import Lane
from emailq.logs import mask_addresses
from emailq.message import Email
from emailq.metrics import DeliveryMetrics
from emailq.mime import envelope, render
from emailq.outages import ProviderPause, TransientTally
from emailq.precedence import CriticalFirst
from emailq.privacy.audit import with_attempt
from emailq.providers import (
    Accepted,
    Permanent,
    Provider,
    Rendered,
    SendResult,
    Transient,
    Withheld,
)
from emailq.ratelimit import Limiter
from emailq.ratelimit.rules import RateRules
from emailq.settling import Settler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    batch_size: int = 100
    concurrency: int = 2  # batches in flight per worker process
    lease_s: float = 30.0
    idle_sleep: float = 0.05  # between empty leases
    reap_interval: float = 1.0
    purge_interval: float = 60.0  # dropping finished records past the broker's retention
    error_backoff: float = 1.0  # after a broker failure, before leasing again
    retry_base_s: float = 60.0  # first retry after 30-60 s, doubling, with jitter (as an MTA)
    retry_cap_s: float = 3600.0
    poison_attempts: int = 5  # our own code failing on a message: buried after this many
    pause_base_s: float = 1.0  # a provider that is down: paused 1, 2, 4 ... s
    pause_cap_s: float = 60.0
    shutdown_timeout: float = 20.0  # after stop, how long in-flight batches may take
    wire_grace_s: float = 35.0  # past that, how long sends already on the wire may finish
    domain: str = "emailq.local"  # right-hand side of generated Message-IDs
    # The express loop takes only these lanes, in small batches, polling often: critical mail
    # then waits for neither a bulk batch in flight nor a large batch of its own.
    express_lanes: tuple[Lane, ...] = (Lane.CRITICAL,)
    express_batch: int = 20
    express_idle_sleep: float = 0.02
    # Critical batches in flight at once: 200 ceremony changes go out side by side, not
    # twenty after twenty.
    express_concurrency: int = 4
    # While critical mail is in hand, the other loops yield for at most this long at a time.
    max_yield_s: float = 1.0

    @property
    def fence_margin_s(self) -> float:
        """A send must start this long before its lease ends: room for the send itself."""
        return self.lease_s / 3

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 4


def retry_delay(attempt: int, settings: WorkerSettings, hint: float | None = None) -> float:
    """Capped exponential backoff with jitter; a provider's retry-after hint is a floor."""
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * 2 ** max(0, attempt - 1))
    return max(random.uniform(ceiling / 2, ceiling), hint or 0.0)


def render_job(job: Job, domain: str) -> Rendered:
    email = Email.from_payload(job.payload)
    mail_from, recipients = envelope(email)
    if job.recipients is not None:  # the rest took it on an earlier attempt
        recipients = [r for r in recipients if r in job.recipients]
    data = render(email, message_id=job.id, domain=domain)
    tags = tuple(email.tags.items())
    return Rendered(job.id, mail_from, tuple(recipients), data, email.idempotency_key, tags)


class _Route:
    """One provider with its own pause: the express loop's connections fail on their own."""

    def __init__(self, provider: Provider, settings: WorkerSettings) -> None:
        self.provider = provider
        self.pause = ProviderPause(provider.name, settings.pause_base_s, settings.pause_cap_s)
        self.tally = TransientTally(provider.name)
        # While rate limits turn mail away, lease about as much as they let through: the
        # rest would only be leased to be put back.
        self.lease_cap: int | None = None
        # Twice the connections: one group on the wire while the one before is settled.
        # At the connections alone, a free connection waited for the settle in flight
        # (Redis: 0.92 of the old batch-settling code's throughput, 1.03 with twice).
        self.window = _Window(2 * provider.concurrency if provider.concurrency else None)


class _Window:
    """Mail sent or on the wire but not yet settled, at most ``limit`` messages: a killed
    worker then re-sends at most that many. A send waits for room (first come, first
    served); settling makes room for one each."""

    def __init__(self, limit: int | None) -> None:
        self._room = asyncio.Semaphore(limit) if limit else None

    async def enter(self) -> None:
        if self._room is not None:
            await self._room.acquire()

    def leave(self) -> None:
        if self._room is not None:
            self._room.release()


class _BatchGate:
    """What a provider asks before each message and tells after it (providers.base)."""

    def __init__(self, worker: Worker, route: _Route, jobs: Sequence[Job]) -> None:
        self.worker = worker
        self.route = route
        self.jobs = jobs
        self.critical = {job.id for job in jobs if job.lane is Lane.CRITICAL}

    async def may_send(self, message_id: str) -> bool:
        route, worker = self.route, self.worker
        if message_id not in self.critical:
            await worker.critical.wait()  # a ceremony change in hand goes first
        if message_id in worker.unsettled:  # a provider chain's next try: it has its room
            return route.pause.remaining == 0 and worker.fence.may_send(message_id)
        await route.window.enter()
        # Checked after any wait for room: the lease must still hold when the send starts.
        if route.pause.remaining == 0 and worker.fence.may_send(message_id):
            worker.unsettled[message_id] = route  # room given back once it is settled
            return True
        route.window.leave()
        return False

    def done(self, index: int, result: SendResult) -> None:
        self.worker.settle_result(self.jobs[index], result, self.route)


class Worker:
    def __init__(
        self,
        broker: Broker,
        provider: Provider,
        settings: WorkerSettings | None = None,
        *,
        name: str | None = None,
        limiter: Limiter | None = None,
        rules: RateRules | None = None,
        express_provider: Provider | None = None,
        metrics: DeliveryMetrics | None = None,
        on_settled: Callable[[Sequence[Outcome]], None] | None = None,
    ) -> None:
        self.broker = broker
        self.settings = settings or WorkerSettings()
        s = self.settings
        self.route = _Route(provider, s)
        # Its own connections, so critical mail never queues behind a bulk batch's sends.
        self.express_route = _Route(express_provider, s) if express_provider else self.route
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.limiter = limiter if rules and rules.active else None
        self.rules = rules or RateRules()
        self.on_settled = on_settled
        self.metrics = metrics
        self.fence = LeaseFence(s.lease_s, s.fence_margin_s)
        self.unsettled: dict[str, _Route] = {}  # sent (or on the wire), not yet settled
        self.critical = CriticalFirst(s.max_yield_s)
        # With an express loop, critical mail is its alone: in a batch loop's batch it would
        # wait for connections whose bulk sends are yielding to it.
        express = set(s.express_lanes)
        self._batch_lanes = tuple(lane for lane in Lane if lane not in express) if express else None
        self._settler: Settler | None = None
        # Lease, settle and heartbeat: on the backend's asyncio client while run() runs, else on
        # threads (process() called on its own, as tests do).
        self.calls = BrokerCalls(broker)

    @property
    def provider(self) -> Provider:
        return self.route.provider

    @property
    def settler(self) -> Settler:
        if self._settler is None:  # made on first use, inside the running event loop
            self._settler = Settler(lambda group: self.calls.settle(group), self._observe,
                                    self._make_room)  # fmt: skip
        return self._settler

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then finish (or release) what is in hand."""
        self.calls = self.broker.calls()
        try:
            await self._run(stop)
        finally:
            await self.calls.aclose()
            self.calls = BrokerCalls(self.broker)

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        for route in {id(r): r for r in (self.route, self.express_route)}.values():
            await route.provider.start()  # a provider chain's health checks
        loops = [asyncio.create_task(self._loop(stop, self.route)) for _ in range(s.concurrency)]
        if s.express_lanes:
            loops.append(asyncio.create_task(self._express_loop(stop)))
        reaper = asyncio.create_task(self._reap(stop))
        await stop.wait()
        _, late = await asyncio.wait(loops, timeout=s.shutdown_timeout)
        if late:
            # Past the deadline: nothing new goes on the wire (those messages are released),
            # and sends already on it get to finish, so a restart does not send them again.
            self.fence.closed = True
            _, stuck = await asyncio.wait(late, timeout=s.wire_grace_s)
            for task in stuck:  # their leases lapse and the mail comes back
                task.cancel()
        await asyncio.gather(*loops, reaper, return_exceptions=True)
        await self.settler.flush()
        for route in {id(r): r for r in (self.route, self.express_route)}.values():
            route.tally.report()

    async def _loop(self, stop: asyncio.Event, route: _Route) -> None:
        """A batch loop: lease a batch of any lane, deliver it, lease the next."""
        s = self.settings
        while not stop.is_set():
            pause = route.pause.remaining or s.idle_sleep
            if not route.pause.remaining:
                await self.critical.wait()  # no new batch while critical mail is in hand
                try:
                    asked_at = time.monotonic()
                    jobs = await self._lease(route, s.batch_size, self._batch_lanes)
                    if jobs:
                        pause = await self.process(jobs, route, asked_at)
                except Exception:
                    # A broker failure must not end the loop quietly (a worker that looks
                    # alive but sends nothing): log it, back off, lease again.
                    log.exception("delivery loop failed; trying again in %.0f s", s.error_backoff)
                    pause = s.error_backoff
            await self._pause(stop, pause)

    async def _express_loop(self, stop: asyncio.Event) -> None:
        """Critical mail in small batches, polled often, several batches at once: while
        one is being sent the next is leased, and the batch loops yield meanwhile."""
        s, route = self.settings, self.express_route
        in_flight: set[asyncio.Task[float]] = set()
        while not stop.is_set():
            if len(in_flight) >= s.express_concurrency:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            if route.pause.remaining:
                await self._pause(stop, route.pause.remaining)
                continue
            try:
                asked_at = time.monotonic()
                jobs = await self._lease(route, s.express_batch, s.express_lanes)
            except Exception:
                log.exception("express loop failed; trying again in %.0f s", s.error_backoff)
                await self._pause(stop, s.error_backoff)
                continue
            if jobs:
                task = asyncio.create_task(self.process(jobs, route, asked_at))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                continue  # more may be waiting: lease again at once
            await self.calls.wait_for_critical(s.express_idle_sleep)  # or a critical enqueue
        await asyncio.gather(*in_flight, return_exceptions=True)

    async def _lease(
        self, route: _Route, batch: int, lanes: tuple[Lane, ...] | None
    ) -> Sequence[Job]:
        size = min(batch, route.lease_cap or batch)
        jobs = await self.calls.lease(
            self.name, size, self.settings.lease_s, lanes, request_id=uuid.uuid4().hex
        )
        if route is self.express_route is not self.route:  # its own connections: others yield
            self.critical.hold(job.id for job in jobs if job.lane is Lane.CRITICAL)
        return jobs

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        if seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    async def _reap(self, stop: asyncio.Event) -> None:
        """Housekeeping: expired leases back to their lanes (every second or so), and
        finished records past their retention dropped (every minute or so)."""
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while not stop.is_set():
            try:
                reaped = await asyncio.to_thread(self.broker.reap_expired)
                if reaped:
                    log.warning("returned %d messages whose lease expired", reaped)
                if loop.time() >= next_purge:
                    await asyncio.to_thread(self.broker.purge_expired)
                    next_purge = loop.time() + self.settings.purge_interval
            except Exception:
                log.exception("housekeeping failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.reap_interval)

    async def process(
        self, jobs: Sequence[Job], route: _Route | None = None, asked_at: float | None = None
    ) -> float:
        """Deliver one leased batch, settling each message as its outcome is known; returns
        how long the loop should wait before leasing again (a rate limit's wait, or 0).

        ``asked_at``: this process's monotonic time just before the lease was asked for.
        """
        route = route or self.route
        ids = [job.id for job in jobs]
        self.fence.hold(ids, time.monotonic() if asked_at is None else asked_at)
        heartbeat = asyncio.create_task(self._heartbeat(jobs))
        try:
            ready = [job_and_rendered for job in jobs if (job_and_rendered := self._render(job))]
            offered = len(ready)
            ready, wait = await self._pass_limits(ready)
            route.lease_cap = len(ready) + 1 if len(ready) < offered else None
            if ready:
                gate = _BatchGate(self, route, [job for job, _ in ready])
                await route.provider.send_batch([rendered for _, rendered in ready], gate)
        finally:
            heartbeat.cancel()
            self.fence.forget(ids)
            self.critical.forget(ids)  # whatever became of them, they hold nothing up now
        await self.settler.flush()
        return wait

    def _render(self, job: Job) -> tuple[Job, Rendered] | None:
        try:
            return job, render_job(job, self.settings.domain)
        except ValueError as error:  # a payload we cannot read now never will be
            self.settler.add(Outcome(job, Action.BURY, error=f"unreadable payload: {error}"))
        except Exception as error:  # our bug, or an input no check foresaw: this one only
            log.exception("rendering message %s failed", job.id)
            self.settle_result(job, Transient(f"unexpected {type(error).__name__}",
                                              unexpected=True), self.route)  # fmt: skip
        return None

    async def _heartbeat(self, jobs: Sequence[Job]) -> None:
        """Renew the batch's leases until it is done; a lease found lost is fenced off
        (never sent) and renewed no more."""
        held = list(jobs)
        while held:
            await asyncio.sleep(self.settings.heartbeat_s)
            held = [job for job in held if self.fence.holds(job.id)]  # not settled or lost
            if not held:
                return
            asked_at = time.monotonic()
            try:
                kept = set(await self.calls.heartbeat(held, self.settings.lease_s))
            except Exception:
                log.exception("heartbeat failed; the lease may run out")
                continue
            # Settled while the call was under way: nothing left to hold.
            self.fence.hold([i for i in kept if self.fence.holds(i)], asked_at)
            lost = [job.id for job in held if job.id not in kept and self.fence.holds(job.id)]
            if lost:
                self.fence.lose(lost)
                log.warning("lost the lease of %d messages; they will not be sent", len(lost))
                held = [job for job in held if job.id in kept]

    async def _pass_limits(
        self, ready: list[tuple[Job, Rendered]]
    ) -> tuple[list[tuple[Job, Rendered]], float]:
        """(may go now, how long until the rest may): mail a limit holds back goes back to
        the queue until then, instead of waiting here leased."""
        if self.limiter is None or not ready:
            return ready, 0.0
        requests = [
            self.rules.request(
                self.provider.name,
                job.tenant,
                rendered.recipients,
                critical=job.lane is Lane.CRITICAL,
            )
            for job, rendered in ready
        ]
        try:
            grant = await asyncio.to_thread(self.limiter.try_acquire, requests)
        except Exception as error:  # the limits cannot be read: nothing goes, nothing is spent
            log.warning("rate limits unavailable (%s); putting %d messages back",
                        type(error).__name__, len(ready))  # fmt: skip
            backoff = self.settings.error_backoff
            for job, _ in ready:
                self.settler.add(Outcome(job, Action.DEFER, delay=backoff, error="limits down"))
            return [], backoff
        granted = []
        queue_position = 0
        for item, request, ok in zip(ready, requests, grant.granted, strict=True):
            if ok:
                granted.append(item)
                continue
            # Each waiting message comes back when its own turn comes, one limit interval
            # after the one before it, not all at once to be turned away again.
            pace = max((limit.interval for limit in request.limits), default=0.0)
            delay = grant.wait + queue_position * pace
            queue_position += 1
            self.settler.add(Outcome(item[0], Action.DEFER, delay=delay, error="rate limited"))
        return granted, grant.wait

    def settle_result(self, job: Job, result: SendResult, route: _Route) -> None:
        """One message's outcome, settled in the next group."""
        if isinstance(result, Transient):
            route.tally.add(result.reason)
            if result.provider_down:
                route.pause.trip(result.reason)
        elif isinstance(result, Accepted | Permanent):
            route.pause.recovered()
        self.critical.done(job.id)
        self.settler.add(self.outcome(job, result, route))

    def outcome(self, job: Job, result: SendResult, route: _Route | None = None) -> Outcome:
        route = route or self.route
        # Privacy hook: the audit trail's attempt event names the provider and its message id.
        return with_attempt(self._outcome(job, result, route), route.provider.name, result)

    def _outcome(self, job: Job, result: SendResult, route: _Route) -> Outcome:
        if isinstance(result, Accepted):
            return Outcome(job, Action.COMPLETE, error=mask_addresses(result.refused) or None)
        if isinstance(result, Permanent):
            return Outcome(job, Action.BURY, error=mask_addresses(result.reason))
        if isinstance(result, Withheld):
            if self.fence.lost(job.id) or self.fence.closed:
                return Outcome(job, Action.RELEASE)  # refused by the broker if not ours
            return Outcome(job, Action.DEFER, delay=route.pause.remaining, error=result.reason)
        reason = mask_addresses(result.reason)
        if result.provider_down:
            return Outcome(job, Action.DEFER, delay=route.pause.remaining, error=reason)
        if result.unexpected and job.attempts >= self.settings.poison_attempts:
            return Outcome(job, Action.BURY, error=f"gave up after {job.attempts} attempts"
                           f" that failed in emailq itself: {reason}")  # fmt: skip
        delay = retry_delay(job.attempts, self.settings, result.retry_after)
        return Outcome(job, Action.RETRY, delay=delay, error=reason, recipients=result.recipients)

    def _make_room(self, outcomes: Sequence[Outcome]) -> None:
        self.fence.forget(outcome.job.id for outcome in outcomes)  # no lease left to renew
        for outcome in outcomes:
            route = self.unsettled.pop(outcome.job.id, None)
            if route is not None:
                route.window.leave()

    def _observe(self, outcomes: Sequence[Outcome]) -> None:
        if self.metrics:
            self.metrics.observe(outcomes, self.broker.clock())  # local: no round trip per group
        if self.on_settled:
            self.on_settled(outcomes)
