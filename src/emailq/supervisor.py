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


class Supervisor:
    def __init__(self, config: WorkerConfig, processes: int) -> None:
        self.config = config
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
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
        self._workers = [self._spawn(index) for index in range(self.processes)]
        while not self._stopping:
            for index, process in enumerate(self._workers):
                if not process.is_alive():
                    log.warning(
                        "worker %s exited with %s; restarting", process.pid, process.exitcode
                    )
                    self._workers[index] = self._spawn(index)
            time.sleep(0.2)
        return self._shutdown()

    def _shutdown(self) -> int:
        for process in self._workers:
            if process.is_alive() and process.pid:
                signal_process(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.settings.shutdown_timeout + 5
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        return 0


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
