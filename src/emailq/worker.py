"""The worker: lease a batch → render → pass the rate limits → send → settle in one call.

A worker runs ``concurrency`` batch loops in one event loop, so one batch is being sent
while the next is leased and rendered. Broker calls are blocking (SQLite, redis-py) and
short; they run on threads. Leases are kept alive by heartbeats while a batch is in hand,
and every worker reaps expired leases, so a crashed worker's mail comes back wherever
another worker runs. On stop, loops lease nothing more and finish their batch; past the
shutdown deadline, unsent mail is released back to the queue without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emailq.broker import Action, Broker, Job, Outcome
from emailq.lanes import Lane
from emailq.message import Email
from emailq.metrics import DeliveryMetrics
from emailq.mime import envelope, render
from emailq.providers import Accepted, Permanent, Provider, Rendered, SendResult, Transient
from emailq.ratelimit import Limiter
from emailq.ratelimit.rules import RateRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    batch_size: int = 100
    concurrency: int = 2  # batches in flight per worker process
    lease_s: float = 30.0
    idle_sleep: float = 0.05  # between empty leases
    reap_interval: float = 1.0
    purge_interval: float = 60.0  # dropping finished records past the broker's retention
    error_backoff: float = 1.0  # after a broker or provider failure, before leasing again
    retry_base_s: float = 10.0  # first retry after 5-10 s, doubling, with jitter
    retry_cap_s: float = 3600.0
    shutdown_timeout: float = 20.0  # after stop, how long in-flight batches may take
    domain: str = "emailq.local"  # right-hand side of generated Message-IDs
    # The express loop takes only these lanes, in small batches, polling often: critical mail
    # then waits for neither a bulk batch in flight nor a large batch of its own.
    express_lanes: tuple[Lane, ...] = (Lane.CRITICAL,)
    express_batch: int = 20
    express_idle_sleep: float = 0.02


def retry_delay(attempt: int, settings: WorkerSettings, hint: float | None = None) -> float:
    """Exponential backoff with jitter; a provider's retry-after hint is a floor."""
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * 2 ** max(0, attempt - 1))
    return max(random.uniform(ceiling / 2, ceiling), hint or 0.0)


def render_job(job: Job, domain: str) -> Rendered:
    email = Email.from_payload(job.payload)
    mail_from, recipients = envelope(email)
    data = render(email, message_id=job.id, domain=domain)
    tags = tuple(email.tags.items())
    return Rendered(job.id, mail_from, tuple(recipients), data, email.idempotency_key, tags)


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
        self.provider = provider
        # Its own connections, so critical mail never queues behind a bulk batch's sends.
        self.express_provider = express_provider or provider
        self.settings = settings or WorkerSettings()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.limiter = limiter if rules and rules.active else None
        self.rules = rules or RateRules()
        self.on_settled = on_settled
        self.metrics = metrics

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then finish (or release) what is in hand."""
        s = self.settings
        loops = [asyncio.create_task(self._loop(stop)) for _ in range(s.concurrency)]
        if s.express_lanes:
            express = self._loop(
                stop, s.express_lanes, s.express_batch, s.express_idle_sleep,
                self.express_provider,
            )  # fmt: skip
            loops.append(asyncio.create_task(express))
        reaper = asyncio.create_task(self._reap(stop))
        await stop.wait()
        _, late = await asyncio.wait(loops, timeout=self.settings.shutdown_timeout)
        for task in late:  # past the deadline: cancelling releases their unsent mail
            task.cancel()
        await asyncio.gather(*loops, reaper, return_exceptions=True)

    async def _loop(
        self,
        stop: asyncio.Event,
        lanes: tuple[Lane, ...] | None = None,
        batch_size: int | None = None,
        idle_sleep: float | None = None,
        provider: Provider | None = None,
    ) -> None:
        s = self.settings
        batch = batch_size or s.batch_size
        while not stop.is_set():
            pause = idle_sleep or s.idle_sleep
            try:
                jobs = await asyncio.to_thread(
                    self.broker.lease, self.name, batch, s.lease_s, lanes
                )
                if jobs:
                    await self.process(jobs, provider)
                    pause = 0.0
            except Exception:
                # A broker or provider failure must not end the loop quietly (a worker that
                # looks alive but sends nothing): log it, back off, lease again.
                log.exception("delivery loop failed; trying again in %.0f s", s.error_backoff)
                pause = s.error_backoff
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

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

    async def process(self, jobs: Sequence[Job], provider: Provider | None = None) -> list[Outcome]:
        """Deliver one leased batch and settle it in one call.

        Cancelled (the shutdown deadline) or failed part-way: sends still running are
        stopped, what was sent is settled as sent, and the rest is released unsent.
        """
        lost: set[str] = set()  # ids whose lease another worker now holds
        sends: list[asyncio.Task[list[Outcome]]] = []
        heartbeat = asyncio.create_task(self._heartbeat(jobs, lost))
        try:
            outcomes = await self._deliver(jobs, provider or self.provider, sends, lost)
        except BaseException:
            salvaged = _salvage(jobs, sends)
            await asyncio.shield(asyncio.to_thread(self.broker.settle, salvaged))
            raise
        finally:
            heartbeat.cancel()
        await asyncio.to_thread(self.broker.settle, outcomes)
        if self.metrics:
            self.metrics.observe(outcomes, self.broker.clock())
        if self.on_settled:
            self.on_settled(outcomes)
        return outcomes

    async def _heartbeat(self, jobs: Sequence[Job], lost: set[str]) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                kept = set(
                    await asyncio.to_thread(self.broker.heartbeat, jobs, self.settings.lease_s)
                )
            except Exception:
                log.exception("heartbeat failed; the lease may run out")
                continue
            newly_lost = {job.id for job in jobs if job.id not in kept} - lost
            if newly_lost:
                log.warning("lost the lease of %d messages; not sending them", len(newly_lost))
                lost.update(newly_lost)

    async def _deliver(
        self,
        jobs: Sequence[Job],
        provider: Provider,
        sends: list[asyncio.Task[list[Outcome]]],
        lost: set[str],
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        ready: list[tuple[Job, Rendered]] = []
        for job in jobs:
            try:
                ready.append((job, render_job(job, self.settings.domain)))
            except ValueError as error:  # a payload we cannot read now never will be
                outcomes.append(Outcome(job, Action.BURY, error=f"unreadable payload: {error}"))
        while ready:  # each group the rate limits let through is sent while the rest waits
            granted, ready, wait = await self._pass_limits(ready)
            # Mail whose lease ran out (a long rate-limit wait) belongs to another worker now.
            granted = [item for item in granted if item[0].id not in lost]
            sends.append(asyncio.create_task(self._send(granted, provider)))
            if ready:
                await asyncio.sleep(wait)
        for results in await asyncio.gather(*sends):
            outcomes += results
        return outcomes

    async def _pass_limits(
        self, ready: list[tuple[Job, Rendered]]
    ) -> tuple[list[tuple[Job, Rendered]], list[tuple[Job, Rendered]], float]:
        """(may go now, must wait, how long) under the rate limits."""
        if self.limiter is None:
            return ready, [], 0.0
        requests = [
            self.rules.request(self.provider.name, job.tenant, rendered.recipients)
            for job, rendered in ready
        ]
        grant = await asyncio.to_thread(self.limiter.try_acquire, requests)
        granted = [item for item, ok in zip(ready, grant.granted, strict=True) if ok]
        waiting = [item for item, ok in zip(ready, grant.granted, strict=True) if not ok]
        return granted, waiting, grant.wait

    async def _send(self, batch: list[tuple[Job, Rendered]], provider: Provider) -> list[Outcome]:
        if not batch:
            return []
        results = await provider.send_batch([rendered for _, rendered in batch])
        if len(results) != len(batch):  # a provider bug must not lose track of mail
            log.error("%s answered %d results for %d messages", provider.name,
                      len(results), len(batch))  # fmt: skip
            results = [Transient("provider returned no result")] * len(batch)
        return [self.outcome(job, r) for (job, _), r in zip(batch, results, strict=True)]

    def outcome(self, job: Job, result: SendResult) -> Outcome:
        if isinstance(result, Accepted):
            return Outcome(job, Action.COMPLETE)
        if isinstance(result, Permanent):
            return Outcome(job, Action.BURY, error=result.reason)
        delay = retry_delay(job.attempts, self.settings, result.retry_after)
        return Outcome(job, Action.RETRY, delay=delay, error=result.reason)


def _salvage(jobs: Sequence[Job], sends: list[asyncio.Task[list[Outcome]]]) -> list[Outcome]:
    """Stop the sends still running; keep the outcomes of finished ones, release the rest."""
    finished: list[Outcome] = []
    for task in sends:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            finished += task.result()
    settled = {outcome.job.id for outcome in finished}
    return finished + [Outcome(job, Action.RELEASE) for job in jobs if job.id not in settled]
