"""One process's view of its provider chain's health, kept in step with the broker.

Every worker process of a queue has one board. It re-reads the shared records often
(a fraction of the check interval), so the fleet switches within one interval; the
process that holds the checker lease also runs the health checks and writes their
results. A board's circuit breaker watches this process's sends and trips a provider at
once on a burst of transient failures or refused credentials, for every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from emailq.clock import Clock, now
from emailq.failover.state import (
    FailoverPolicy,
    ProviderHealth,
    after_check,
    after_trip,
    send_order,
)
from emailq.failover.store import HealthStore
from emailq.logs import mask_addresses
from emailq.providers.base import HealthCheck, Provider, SendResult, Transient

log = logging.getLogger(__name__)


class BoardMetrics(Collector):
    """The chain's gauges and counters, in a registry of their own; registered into a
    worker's registry as one collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.up = Gauge(
            "emailq_provider_up", "1 while the provider is in use or standing by, 0 while down",
            ["provider"], registry=self.registry,
        )  # fmt: skip
        self.changes = Counter(
            "emailq_provider_state_changes", "Providers going down or coming back",
            ["provider", "state"], registry=self.registry,
        )  # fmt: skip
        self.switches = Counter(
            "emailq_provider_switches", "The chain sending through another provider",
            ["provider"], registry=self.registry,
        )  # fmt: skip
        self.credentials_refused = Counter(
            "emailq_provider_credentials_refused", "Providers refusing our credentials",
            ["provider"], registry=self.registry,
        )  # fmt: skip

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class HealthBoard:
    def __init__(
        self,
        names: Sequence[str],
        checkers: Sequence[Provider],
        store: HealthStore,
        policy: FailoverPolicy,
        *,
        clock: Clock = now,
        metrics: BoardMetrics | None = None,
        holder: str | None = None,
    ) -> None:
        """``checkers``: a provider per name, opened for the health checks alone."""
        self.names = list(names)
        self.checkers = list(checkers)
        self.store = store
        self.policy = policy
        self.clock = clock
        self.metrics = metrics or BoardMetrics()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.health: dict[str, ProviderHealth] = {}
        self._failures = {name: deque[float]() for name in self.names}
        self._active = self.names[0]
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._users = 0
        for name in self.names:
            self.metrics.up.labels(name).set(1)

    # -- what the chain asks and tells ------------------------------------------------------
    def order(self) -> list[int]:
        """This call's order: a provider just back goes first for a growing share."""
        return send_order(self.names, self.health, self.clock(), self.policy.failback_ramp_s)

    def note(self, name: str, result: SendResult) -> None:
        """One send's outcome: a burst of transient failures (or one refused login) trips
        the breaker, and every worker of the queue stops sending through ``name``."""
        if not isinstance(result, Transient) or result.unsure or result.unexpected:
            return
        if result.credentials_refused:
            self.metrics.credentials_refused.labels(name).inc()
            log.error("ALERT: %s refused our credentials (%s); failing over until an operator"
                      " fixes them", name, mask_addresses(result.reason))  # fmt: skip
            self.trip(name, result.reason, credentials_refused=True)
            return
        failures, at = self._failures[name], time.monotonic()
        failures.append(at)
        while failures and failures[0] < at - self.policy.breaker_window_s:
            failures.popleft()
        if len(failures) >= self.policy.breaker_failures:
            failures.clear()
            self.trip(name, f"{self.policy.breaker_failures} transient failures"
                      f" within {self.policy.breaker_window_s:g} s: {result.reason}")  # fmt: skip

    def trip(self, name: str, reason: str, credentials_refused: bool = False) -> None:
        current = self.health.get(name) or ProviderHealth(name)
        if current.down and (current.credentials_refused or not credentials_refused):
            return  # tripped already
        change = partial(after_trip, at=self.clock(), reason=mask_addresses(reason),
                         credentials_refused=credentials_refused)  # fmt: skip
        self._learn({**self.health, name: change(current)})  # this process switches at once
        task = asyncio.get_running_loop().create_task(self._write(name, change))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching (idempotent: both of a worker's chains share one board)."""
        self._users += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.gather(*self._writes, return_exceptions=True)
        for checker in self.checkers:
            await checker.close()

    async def refresh(self) -> None:
        self._learn(await asyncio.to_thread(self.store.read))

    async def check_due(self) -> None:
        """Run the checks that are due, if this process holds the checker lease."""
        held = await asyncio.to_thread(self.store.hold_checker, self.holder, self.policy.lease_s)
        if not held:
            return
        at = self.clock()
        due = [
            (name, checker)
            for name, checker in zip(self.names, self.checkers, strict=True)
            if (record := self.health.get(name)) is None
            or record.last_check is None
            or at - record.last_check >= self.policy.check_interval_s * 0.9
        ]
        found = await asyncio.gather(*(self._check(checker) for _, checker in due))
        for (name, _), check in zip(due, found, strict=True):
            change = partial(after_check, ok=check.ok, at=self.clock(), policy=self.policy,
                             reason=mask_addresses(check.reason),
                             credentials_refused=check.credentials_refused)  # fmt: skip
            if check.credentials_refused:
                self.metrics.credentials_refused.labels(name).inc()
                log.error("ALERT: %s refused our credentials in its health check (%s)",
                          name, mask_addresses(check.reason))  # fmt: skip
            await self._write(name, change)
        if due:
            await self.refresh()

    async def _watch(self) -> None:
        every = min(1.0, self.policy.check_interval_s / 4)
        while True:
            try:
                await self.refresh()
                await self.check_due()
            except Exception:  # the broker away: keep the last view, try again
                log.exception("provider health could not be read or written; trying again")
            await asyncio.sleep(every)

    async def _check(self, checker: Provider) -> HealthCheck:
        try:
            return await asyncio.wait_for(checker.check(), self.policy.check_timeout_s)
        except TimeoutError:
            return HealthCheck(ok=False, reason=f"no answer in {self.policy.check_timeout_s:g} s")
        except Exception as error:  # a bug in a check must not stop the others
            log.exception("health check of %s failed", checker.name)
            return HealthCheck(ok=False, reason=f"unexpected {type(error).__name__}")

    async def _write(self, name: str, change: partial[ProviderHealth]) -> None:
        try:
            record = await asyncio.to_thread(self.store.update, name, change)
        except Exception:
            log.exception("could not record %s's health; this process knows, others will not",
                          name)  # fmt: skip
            return
        self._learn({**self.health, name: record})

    def _learn(self, health: dict[str, ProviderHealth]) -> None:
        """Take a newer view; log and count what changed."""
        for name in self.names:
            before, after = self.health.get(name), health.get(name)
            was_down, is_down = bool(before and before.down), bool(after and after.down)
            if was_down != is_down and after is not None:
                state = "down" if is_down else "up"
                self.metrics.changes.labels(name, state).inc()
                self.metrics.up.labels(name).set(0 if is_down else 1)
                if is_down:
                    log.warning("provider %s is down: %s", name, after.reason)
                else:
                    log.warning("provider %s passed its checks for %g s: back in the chain",
                                name, self.policy.failback_s)  # fmt: skip
        self.health = health
        active = self.names[send_order(self.names, health)[0]]  # the ramp's goal, not a draw
        if active != self._active:
            self.metrics.switches.labels(active).inc()
            log.warning("provider chain now sends through %s (was %s)", active, self._active)
            self._active = active
