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
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess

from prometheus_client import start_http_server

from emailq.broker import open_broker
from emailq.metrics import DeliveryMetrics
from emailq.providers.factory import open_provider
from emailq.ratelimit import Limiter
from emailq.ratelimit.rules import RateRules
from emailq.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    broker_url: str
    provider_url: str
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    rules: RateRules = field(default_factory=RateRules)
    metrics_port: int = 0  # Prometheus endpoint of the first worker; the next gets +1...; 0: off


def limiter_for(broker_url: str) -> Limiter:
    """Limits live where the queue lives, so every worker of that queue shares them."""
    broker = open_broker(broker_url)
    from emailq.broker.sqlite import SQLiteBroker

    if isinstance(broker, SQLiteBroker):
        from emailq.ratelimit.sqlite import SQLiteLimiter

        broker.close()
        return SQLiteLimiter(broker.path)
    from emailq.broker.redis import RedisBroker
    from emailq.ratelimit.redis import RedisLimiter

    assert isinstance(broker, RedisBroker)
    return RedisLimiter(broker.client, broker.prefix)


async def serve_worker(config: WorkerConfig, stop: asyncio.Event) -> None:
    """One worker process's life: open, deliver until ``stop``, close."""
    provider = open_provider(config.provider_url)
    express = open_provider(config.provider_url)
    limiter = limiter_for(config.broker_url) if config.rules.active else None
    metrics = DeliveryMetrics()
    if config.metrics_port:
        start_http_server(config.metrics_port, "127.0.0.1", registry=metrics.registry)
    with open_broker(config.broker_url) as broker:
        worker = Worker(
            broker, provider, config.settings,
            limiter=limiter, rules=config.rules, express_provider=express, metrics=metrics,
        )  # fmt: skip
        await worker.run(stop)
    await provider.close()
    await express.close()


def worker_main(config: WorkerConfig) -> None:
    """Entry point of a worker process: SIGTERM and SIGINT stop it gracefully."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_worker(config, stop)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
    def __init__(self, config: WorkerConfig, processes: int) -> None:
        self.config = config
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot() for _ in range(processes)]
        self._stopping = False

    def _spawn(self, index: int) -> BaseProcess:
        config = self.config
        if config.metrics_port:
            config = replace(config, metrics_port=config.metrics_port + index)
        process = self._context.Process(target=worker_main, args=(config,), daemon=False)
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
            time.sleep(0.2)
        return self._shutdown()

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
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.is_alive() and process.pid:
                signal_process(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.settings.shutdown_timeout + 5
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        return 0


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
