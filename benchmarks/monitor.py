"""What the monitor costs, and how fast its history answers.

    .venv/bin/python benchmarks/monitor.py e2e [--n 50000] [--rounds 3] [--backend redis]
    .venv/bin/python benchmarks/monitor.py stats [--queued 1000000] [--backend sqlite]

``e2e``: benchmarks/e2e.py's emailq delivery into Postfix's smtp-sink, with the monitor off
(workers publish nothing: ``monitor.publish_s = 0``) and on (workers publish every
``--publish`` s and an ``emailq monitor`` process snapshots every ``--interval`` s; its CPU
counts with the workers'), interleaved off/on/on/off… so drift on a shared machine hits
both alike. Prints each run's drain rate and the mean cost of the monitor.

``stats``: ``--queued`` messages waiting, an hour of history (one snapshot per interval,
each with latency sketches for every lane and 20 tenants), then ``GET /v1/stats?since=1h``
against a running ``emailq serve`` (which runs the monitor too): p50/p99 over
``--requests`` calls, at the default step and at a one-minute step. No figure is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from e2e import REDIS_URL, Result, run_emailq
from emailq.broker import NewMessage, open_broker
from emailq.clock import ManualClock
from emailq.deployment import Deployment
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.monitor.recorder import Recorder, Tally, sample_body
from emailq.monitor.runner import Monitor
from emailq.monitor.store import open_store
from emailq.settings import Settings
from emailq.sink import free_port
from peers.harness import smtp_sink

ROOT = Path(__file__).resolve().parent.parent


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_MONITOR_")}


def e2e(args: argparse.Namespace) -> None:
    order = []
    for round_ in range(args.rounds):  # off on on off, on off off on, ...
        order += ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
    drains: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with smtp_sink() as port:
        for mode in order:
            env = base_env() | (
                {"EMAILQ_MONITOR_PUBLISH_S": str(args.publish),
                 "EMAILQ_MONITOR_INTERVAL_S": str(args.interval)}
                if mode == "on" else {"EMAILQ_MONITOR_PUBLISH_S": "0"}
            )  # fmt: skip
            extra = ("monitor",) if mode == "on" else ()
            with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
                result: Result = run_emailq(args.backend, args, port, Path(tmp), env, extra)
            if result.error or result.drain is None:
                sys.exit(f"{mode}: {result.error}")
            rate = result.drain.per_minute
            drains[mode].append(rate)
            cpu[mode].append(result.cpu_per_1k)
            print(f"monitor {mode:<3}: {rate:>9,.0f} emails/min, {result.cpu_per_1k:.2f} CPU s/1k",
                  flush=True)  # fmt: skip
    off, on = statistics.mean(drains["off"]), statistics.mean(drains["on"])
    print(
        f"\nmean drain: off {off:,.0f}/min, on {on:,.0f}/min: the monitor costs "
        f"{(off - on) / off * 100:+.1f} % of throughput (target: at most 3 %)"
    )
    print(f"mean CPU s per 1k emails: off {statistics.mean(cpu['off']):.2f}, "
          f"on {statistics.mean(cpu['on']):.2f}")  # fmt: skip
    spread = max(drains["off"]) / min(drains["off"]) - 1
    print(f"run-to-run spread with the monitor off: {spread * 100:.1f} %")


def fill(url: str, queued: int) -> float:
    payload = parse_email({"from": "planner@weddings.example", "to": "guest@example.org",
                           "subject": "Invitation", "text": "You are invited.\n" * 40,
                           "html": "<p>You are invited.</p>" * 20}).to_payload()  # fmt: skip
    lanes = [Lane.BULK] * 8 + [Lane.STANDARD, Lane.PRE_WEDDING]
    started = time.perf_counter()
    with open_broker(url) as broker:
        for start in range(0, queued, 5000):
            count = min(5000, queued - start)
            broker.enqueue_many([
                NewMessage(payload, lane=lanes[i % len(lanes)], tenant=f"t{i % 20}")
                for i in range(start, start + count)
            ])  # fmt: skip
    return time.perf_counter() - started


def write_history(url: str, hours: float, interval: float) -> None:
    """An hour of snapshots as the monitor writes them: a manual clock ticks through it."""
    clock = ManualClock(time.time() - hours * 3600)
    settings = Settings(broker={"url": url}, provider={"url": "file:///tmp"},
                        monitor={"interval_s": interval})  # fmt: skip
    rng = random.Random(7)
    with Deployment(settings, clock=clock) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker, clock)
        for _ in range(int(hours * 3600 / interval)):
            for worker in ("w1", "w2"):
                recorder = Recorder(worker, "smtp", clock)
                for i in range(400):
                    lane = (Lane.BULK, Lane.STANDARD, Lane.CRITICAL, Lane.WEDDING_DAY)[i % 4]
                    latency = rng.lognormvariate(0, 1.2)
                    job_tenant = f"t{i % 20}"
                    cell = recorder.window.cells.setdefault((lane.value, job_tenant), Tally())
                    cell.sent += 1
                    cell.latency.add(latency)
                store.publish_sample(sample_body(recorder.take(), worker, "smtp", clock()))
            monitor.tick()
            clock.advance(interval)
        store.close()
        monitor.close()


def timings(client: httpx.Client, path: str, key: str, requests: int) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    client.get(path, headers=headers).raise_for_status()
    cold = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return cold, sorted(times)


def stats(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        if args.backend == "redis":
            url = f"{REDIS_URL}?prefix=emailq-bench-{uuid.uuid4().hex}"
        else:
            url = f"sqlite:///{tmp}/queue.db"
        try:
            seconds = fill(url, args.queued)
            print(f"queued {args.queued:,} messages in {seconds:.0f} s", flush=True)
            started = time.perf_counter()
            write_history(url, 1.0, args.interval)
            print(f"wrote an hour of history ({3600 / args.interval:.0f} snapshots) in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
            with Deployment(Settings(broker={"url": url})) as deployment:
                _, key = deployment.keys.create("ops", operator=True)
                print(f"depth now: {deployment.status().backlog:,} messages")
            port = free_port()
            env = base_env() | {"EMAILQ_BROKER_URL": url,
                                "EMAILQ_MONITOR_INTERVAL_S": str(args.interval)}  # fmt: skip
            command = [sys.executable, "-m", "emailq", "serve", "--port", str(port)]
            server = subprocess.Popen(command, env=env, cwd=ROOT)
            try:
                base = f"http://127.0.0.1:{port}"
                with httpx.Client(base_url=base, timeout=30) as client:
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            client.get("/health")
                            break
                        except httpx.TransportError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.2)
                    for path in ("/v1/stats?since=1h", "/v1/stats?since=1h&step=60"):
                        cold, times = timings(client, path, key, args.requests)
                        p50 = times[len(times) // 2]
                        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                        print(f"GET {path}: first {cold:.1f} ms, then p50 {p50:.1f} ms, "
                              f"p99 {p99:.1f} ms over {len(times)} calls "
                              f"(target p99 <= 20 ms)")  # fmt: skip
            finally:
                server.terminate()
                server.wait(30)
        finally:
            if args.backend == "redis":
                with open_broker(url) as broker:
                    broker.purge()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("e2e", help="throughput with the monitor off and on, interleaved")
    run.add_argument("--n", type=int, default=50_000, help="bulk emails per run")
    run.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    run.add_argument("--backend", default="redis", choices=["redis", "sqlite"])
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--publish", type=float, default=5.0, help="monitor.publish_s when on")
    run.add_argument("--interval", type=float, default=15.0, help="monitor.interval_s when on")
    run.set_defaults(profile=False)
    read = sub.add_parser("stats", help="GET /v1/stats latency with a large queue")
    read.add_argument("--queued", type=int, default=1_000_000)
    read.add_argument("--backend", default="sqlite", choices=["redis", "sqlite"])
    read.add_argument("--interval", type=float, default=15.0)
    read.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    e2e(args) if args.what == "e2e" else stats(args)


if __name__ == "__main__":
    main()
