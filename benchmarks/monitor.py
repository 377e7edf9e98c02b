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
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import e2e as e2e_module
from e2e import Result, emailq_url, run_emailq
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
from peers.probes import (
    calls_between,
    cpu_seconds,
    gc_pauses,
    private_redis,
    redis_calls,
    redis_server_pid,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_MONITOR_")}


def e2e(args: argparse.Namespace) -> None:
    """Off/on runs interleaved; per run the drain rate and the CPU of every process the
    run needs: the workers, the monitor process (on) and, with Redis, a private
    redis-server's (ours alone: the monitor's writes and reads cost Redis CPU too)."""
    order = []
    for round_ in range(args.rounds):  # off on on off, on off off on, ...
        order += ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
    drains: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(smtp_sink())
        redis_pid = None
        if args.backend == "redis":
            url = stack.enter_context(private_redis())
            e2e_module.REDIS_URL = url  # run_emailq's queues go to our own server
            redis_pid = redis_server_pid(url)
        for index, mode in enumerate(order):
            env = base_env() | (
                {"EMAILQ_MONITOR_PUBLISH_S": str(args.publish),
                 "EMAILQ_MONITOR_INTERVAL_S": str(args.interval)}
                if mode == "on" else {"EMAILQ_MONITOR_PUBLISH_S": "0"}
            )  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
                url = e2e_module.emailq_url(args.backend, Path(tmp))
                e2e_module.emailq_url = lambda *_, url=url: url  # type: ignore[misc]
                monitor = start_monitor(url, env) if mode == "on" else None
                monitor_before = cpu_seconds(monitor.pid) if monitor else 0.0
                redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
                try:
                    result: Result = run_emailq(args.backend, args, port, Path(tmp), env)
                finally:
                    redis_s = cpu_seconds(redis_pid) - redis_before if redis_pid else 0.0
                    monitor_s = cpu_seconds(monitor.pid) - monitor_before if monitor else 0.0
                    if monitor:
                        monitor.terminate()
                        monitor.wait(30)
                    e2e_module.emailq_url = emailq_url
            if result.error or result.drain is None or result.usage is None:
                sys.exit(f"{mode}: {result.error}")
            rate, sent = result.drain.per_minute, result.drain.total
            total = (result.usage.cpu_s + redis_s + monitor_s) / sent * 1000
            drains[mode].append(rate)
            cpu[mode].append(total)
            print(f"run {index + 1} monitor {mode:<3}: {rate:>9,.0f} emails/min; CPU s per 1k"
                  f" emails: workers {result.cpu_per_1k:.3f}, Redis {redis_s / sent * 1000:.3f},"
                  f" monitor process {monitor_s / sent * 1000:.3f} (its start-up excluded),"
                  f" all {total:.3f}", flush=True)  # fmt: skip
    report_e2e(drains, cpu)


def start_monitor(url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``emailq monitor`` on the run's queue, started before the run and given time for
    its imports: what it costs while mail flows is what counts, not its start-up (inside
    ``emailq run`` and ``serve`` it is a thread of a process that is running anyway)."""
    command = [sys.executable, "-m", "emailq", "monitor", "--broker-url", url]
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    settled, last = 0, -1.0
    for _ in range(100):  # until its CPU stops growing: imports done, waiting for its slot
        time.sleep(0.2)
        used = cpu_seconds(proc.pid)
        settled = settled + 1 if used == last else 0
        last = used
        if settled >= 3:
            break
    return proc


def report_e2e(drains: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    def spread(values: list[float]) -> str:
        return (
            f"median {statistics.median(values):,.3f} (range {min(values):,.3f}–{max(values):,.3f})"
        )

    off, on = statistics.median(drains["off"]), statistics.median(drains["on"])
    print(f"\ndrain emails/min: off {spread(drains['off'])}, on {spread(drains['on'])}")
    swing = max(drains["off"]) / min(drains["off"]) * 100 - 100
    print(f"  the monitor costs {(off - on) / off * 100:+.1f} % of median throughput;"
          f" run-to-run spread with it off: {swing:.0f} %")  # fmt: skip
    print(f"CPU s per 1k emails, all processes: off {spread(cpu['off'])},"
          f" on {spread(cpu['on'])}")  # fmt: skip
    cost = statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1
    pairs = [b / a - 1 for a, b in zip(cpu["off"], cpu["on"], strict=True)]
    print(f"  the monitor costs {cost * 100:+.1f} % CPU per email (medians); per off/on pair:"
          f" {', '.join(f'{p * 100:+.1f} %' for p in pairs)}  (target: at most 3 %)")  # fmt: skip


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


def wait_for_api(client: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.get("/health")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def measure_reads(url: str, key: str, args: argparse.Namespace, tmp: str) -> None:
    """The timed GETs against ``emailq serve`` (with its monitor), and what they cost:
    the server's CPU, Redis commands and CPU (a private server: ours alone), GC pauses."""
    port = free_port()
    gc_log = Path(tmp) / "gc.jsonl"
    env = base_env() | {"EMAILQ_BROKER_URL": url,
                        "EMAILQ_MONITOR_INTERVAL_S": str(args.interval)}  # fmt: skip
    command = [sys.executable, str(HERE / "peers" / "serve_probe.py"), str(gc_log), "--",
               "serve", "--port", str(port)]  # fmt: skip
    redis_pid = redis_server_pid(url) if url.startswith("redis") else None
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for_api(client)
            for path in ("/v1/stats?since=1h", "/v1/stats?since=1h&step=60"):
                calls = redis_calls(url) if redis_pid else {}
                cpu = cpu_seconds(server.pid), cpu_seconds(redis_pid) if redis_pid else 0.0
                window = time.time()
                cold, times = timings(client, path, key, args.requests)
                window_end = time.time()
                cpu_after = cpu_seconds(server.pid), cpu_seconds(redis_pid) if redis_pid else 0.0
                n = len(times)
                p50, p90 = times[n // 2], times[int(n * 0.9)]
                p99 = times[min(n - 1, int(n * 0.99))]
                print(f"GET {path}: first {cold:.1f} ms, then p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
                      f"p99 {p99:.1f} ms, max {times[-1]:.1f} ms over {n} calls in "
                      f"{window_end - window:.1f} s; {sum(t > 20 for t in times)} over 20 ms "
                      f"(target p99 <= 20 ms)")  # fmt: skip
                server_ms = (cpu_after[0] - cpu[0]) * 1000 / (n + 1)
                line = f"  per call: API process CPU {server_ms:.2f} ms"
                if redis_pid:
                    redis_ms = (cpu_after[1] - cpu[1]) * 1000 / (n + 1)
                    spent = calls_between(calls, redis_calls(url))
                    spent.pop("info", None)  # our own INFO probes
                    per = ", ".join(f"{k} {v / (n + 1):.2f}" for k, v in sorted(spent.items()))
                    line += f", Redis CPU {redis_ms:.2f} ms, Redis commands: {per or 'none'}"
                print(line)
                pauses = gc_pauses(gc_log, window, window_end)
                full = [ms for generation, ms in pauses if generation == 2]
                print(f"  GC pauses >= 1 ms in the API process meanwhile: {len(pauses)}"
                      f" (longest {max((ms for _, ms in pauses), default=0):.1f} ms);"
                      f" full collections: {len(full)}", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


def stats(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stats-"))
        if args.backend == "redis":  # our own server: its CPU and commands are ours alone
            url = f"{stack.enter_context(private_redis())}?prefix=emailq-bench"
        else:
            url = f"sqlite:///{tmp}/queue.db"
        seconds = fill(url, args.queued)
        print(f"queued {args.queued:,} messages in {seconds:.0f} s", flush=True)
        started = time.perf_counter()
        write_history(url, 1.0, args.interval)
        print(f"wrote an hour of history ({3600 / args.interval:.0f} snapshots) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        with Deployment(Settings(broker={"url": url})) as deployment:
            _, key = deployment.keys.create("ops", operator=True)
            print(f"depth now: {deployment.status().backlog:,} messages")
        measure_reads(url, key, args, tmp)


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
    read.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    e2e(args) if args.what == "e2e" else stats(args)


if __name__ == "__main__":
    main()
