"""One worker process's life: what `emailq worker` runs, and what `emailq run`'s supervisor
starts as ``python -m emailq.worker_process`` with the effective settings on its stdin.

It imports the delivery path only (settings, broker, providers, MIME, the worker loop),
not the HTTP API, the command line's tables or the load-test tool: the autoscaler starts
workers under pressure, and a new one should deliver within a few hundred milliseconds
and hold no more memory than delivering takes (a test keeps those imports out).
"""

from __future__ import annotations

import gc

# No garbage collection while the modules below load: they create ~65,000 tracked objects,
# none of them garbage, and the collections that triggers cost ~7 % of a worker's start. The end
# of this module freezes what they made (later collections skip it) and turns it back on.
gc.disable()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import uvloop  # noqa: E402

from emailq.deployment import Deployment  # noqa: E402
from emailq.logs import configure_logging  # noqa: E402
from emailq.metrics import DeliveryMetrics  # noqa: E402
from emailq.monitor.publishing import start_publishing, stop_publishing, worker_recorder  # noqa: E402
from emailq.settings import Settings, redact_url  # noqa: E402
from emailq.worker import Worker  # noqa: E402

log = logging.getLogger("emailq.worker_process")  # not "__main__" under python -m


async def serve_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Open the deployment, deliver until ``stop``, close."""
    with Deployment.from_settings(settings) as deployment:
        provider = deployment.open_provider()
        express = deployment.open_provider()
        # Critical mail comes in bursts too short to measure the relay by: the express pool
        # opens as many connections as the bulk pool has found to help.
        express.size_like(provider)
        rules = deployment.rate_rules()
        metrics = DeliveryMetrics()
        recorder = worker_recorder(settings, provider, express)  # the monitor's samples
        if len(settings.provider.urls) > 1:  # the chain's state changes, on the same port
            metrics.registry.register(deployment.provider_board.metrics)
        port = settings.worker.metrics_port
        if port:
            from prometheus_client import start_http_server

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


def worker_main(settings: Settings, monitor: bool = False) -> None:
    """Deliver until SIGTERM or SIGINT (a graceful stop). ``monitor``: this process also
    runs the monitor on a thread (`emailq run` gives it to one worker; the broker's lease
    keeps one writer per queue), when ``monitor.enabled``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_worker(settings, stop)

    configure_logging(settings)
    watching = None
    if monitor and settings.monitor.enabled:
        from emailq.monitor.runner import MonitorThread

        watching = MonitorThread(Deployment.from_settings(settings)).start()
    try:
        # uvloop (already the API's loop): the same asyncio, about 10 % less CPU per email.
        uvloop.run(main())
    finally:
        if watching is not None:
            watching.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m emailq.worker_process [--index N] [--monitor]``, the settings on stdin
    (:meth:`Settings.handoff`): a worker of `emailq run`'s pool."""
    parser = argparse.ArgumentParser(prog="python -m emailq.worker_process")
    parser.add_argument("--index", type=int, default=0, help="the worker's place in the pool")
    parser.add_argument("--monitor", action="store_true", help="also run the monitor")
    args = parser.parse_args(argv)
    handoff = sys.stdin.read()
    if not handoff.strip():
        sys.exit("python -m emailq.worker_process reads its settings on stdin (emailq run)")
    settings = Settings.from_handoff(handoff)
    port = settings.worker.metrics_port
    if port:  # each worker its own Prometheus port: the first +0, the next +1...
        worker = settings.worker.model_copy(update={"metrics_port": port + args.index})
        settings = settings.model_copy(update={"worker": worker})
    worker_main(settings, monitor=args.monitor)


gc.freeze()
gc.enable()

if __name__ == "__main__":
    main()
