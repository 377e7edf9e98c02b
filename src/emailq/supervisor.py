"""Run several worker processes and keep them running (``emailq run``, ``emailq worker -n``).

Each worker is a separate process (the GIL makes threads no use for rendering). The
supervisor restarts a worker that dies, forwards SIGTERM/SIGINT to all of them, and waits
for them to finish their batches; a worker that outlives the grace period is killed, and
its leased mail comes back when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from prometheus_client import start_http_server

from emailq.autoscale.controller import Autoscaler
from emailq.deployment import Deployment
from emailq.logs import configure_logging
from emailq.metrics import DeliveryMetrics
from emailq.monitor.publishing import start_publishing, stop_publishing, worker_recorder
from emailq.settings import Settings, redact_url
from emailq.worker import Worker

log = logging.getLogger(__name__)


async def serve_worker(settings: Settings, stop: asyncio.Event) -> None:
    """One worker process's life: open the deployment, deliver until ``stop``, close."""
    with Deployment.from_settings(settings) as deployment:
        provider = deployment.open_provider()
        express = deployment.open_provider()
        rules = deployment.rate_rules()
        metrics = DeliveryMetrics()
        recorder = worker_recorder(settings, provider, express)  # the monitor's samples
        if len(settings.provider.urls) > 1:  # the chain's state changes, on the same port
            metrics.registry.register(deployment.provider_board.metrics)
        port = settings.worker.metrics_port
        if port:
            start_http_server(port, "127.0.0.1", registry=metrics.registry)
        log.info("worker %d delivering from %s through %s", os.getpid(),
                 redact_url(settings.broker.url), redact_url(settings.provider.url))  # fmt: skip
        worker = Worker(
            deployment.broker,
            provider,
            deployment.worker_settings(),
            limiter=deployment.limiter if rules.active else None,
            rules=rules,
            express_provider=express,
            metrics=metrics,
            on_settled=recorder.record if recorder else None,
        )
        publisher = start_publishing(deployment, recorder, worker.name, stop)
        try:
            await worker.run(stop)
        finally:
            await provider.close()
            await express.close()
            await stop_publishing(publisher)


def worker_main(settings: Settings) -> None:
    """Entry point of a worker process: SIGTERM and SIGINT stop it gracefully."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_worker(settings, stop)

    configure_logging(settings)
    asyncio.run(main())


STABLE_AFTER = 30.0  # seconds; a worker that ran this long before exiting did start fine
MAX_RESTART_DELAY = 60.0


def restart_delay(exits_in_a_row: int) -> float:
    """Seconds before restarting a worker after its n-th exit in a row, each soon after it
    started: at once the first time, then 1, 2, 4... s up to a minute. A worker that
    cannot start (a wrong URL, Redis down) then costs little instead of a spawn per poll."""
    if exits_in_a_row <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY, 2.0 ** (exits_in_a_row - 2))


@dataclass
class _Slot:
    """One worker position: its process (None while waiting to restart) and its history."""

    process: BaseProcess | None = None
    started: float = 0.0
    exits_in_a_row: int = 0
    restart_at: float = 0.0


class Supervisor:
    def __init__(
        self, settings: Settings, processes: int, autoscaler: Autoscaler | None = None
    ) -> None:
        self.settings = settings
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot() for _ in range(processes)]
        self._stopping = False
        # The pool follows the autoscaler's decisions; workers it stops finish (SIGTERM:
        # finish or release what they hold) in ``_draining`` while the rest go on.
        self.autoscaler = autoscaler
        self._draining: list[BaseProcess] = []
        self._next_decision = 0.0

    def _spawn(self, index: int) -> BaseProcess:
        settings = self.settings
        port = settings.worker.metrics_port
        if port:  # each worker its own Prometheus port: the first +0, the next +1...
            worker = settings.worker.model_copy(update={"metrics_port": port + index})
            settings = settings.model_copy(update={"worker": worker})
        process = self._context.Process(target=worker_main, args=(settings,), daemon=False)
        process.start()
        return process

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self._stopping:
            now = time.monotonic()
            for index, slot in enumerate(self._slots):
                if slot.process is not None and not slot.process.is_alive():
                    self._schedule_restart(slot, now)
                if slot.process is None and now >= slot.restart_at:
                    slot.process, slot.started = self._spawn(index), now
            self._draining = [p for p in self._draining if p.is_alive()]
            if self.autoscaler is not None and now >= self._next_decision:
                self._next_decision = now + self.autoscaler.interval_s
                self._autoscale()
            time.sleep(0.2)
        return self._shutdown()

    def _autoscale(self) -> None:
        assert self.autoscaler is not None
        try:
            decision = self.autoscaler.step(len(self._slots))
        except Exception:  # the broker away for a while: keep the pool, try next time
            log.exception("autoscaler: no decision this time")
            return
        if decision is not None:
            self.resize(decision.workers)

    def resize(self, processes: int) -> None:
        """Grow the pool (new workers start on the next tick) or shrink it from the end
        (a graceful SIGTERM: nothing is lost, the worker finishes or releases its mail)."""
        while len(self._slots) < processes:
            self._slots.append(_Slot())
        while len(self._slots) > processes:
            process = self._slots.pop().process
            if process is not None and process.is_alive() and process.pid:
                signal_process(process.pid, signal.SIGTERM)
                self._draining.append(process)
        self.processes = processes

    def _schedule_restart(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        lived = now - slot.started
        slot.exits_in_a_row = 1 if lived >= STABLE_AFTER else slot.exits_in_a_row + 1
        delay = restart_delay(slot.exits_in_a_row)
        log.warning(
            "worker %s exited with %s after %.1f s; restarting in %.0f s",
            slot.process.pid, slot.process.exitcode, lived, delay,
        )  # fmt: skip
        slot.process, slot.restart_at = None, now + delay

    def _shutdown(self) -> int:
        if self.autoscaler is not None:
            with contextlib.suppress(Exception):  # a lease left behind lapses by itself
                self.autoscaler.close()
        running = [slot.process for slot in self._slots if slot.process is not None]
        running += self._draining
        for process in running:
            if process.is_alive() and process.pid:
                signal_process(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.worker.shutdown_timeout_s + 5
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        return 0


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
