"""End-to-end delivery: emailq's workers against Celery and arq, into Postfix's smtp-sink.

    .venv/bin/python benchmarks/e2e.py [--n 100000] [--backends redis,sqlite]
        [--peers arq,celery] [--peer-n 100000] [--workers 2] [--profile]

Every system gets the same ~1.5 KB invitations (text + HTML, one distinct recipient each,
benchmarks/peers/workload.py), the same number of worker processes and the same receiving
end: Postfix's ``smtp-sink`` (C), not emailq's aiosmtpd sink, which tops out far lower.
All mail is queued first (timed: enqueue/s), then the workers start and the drain is timed
from their start to the last delivery (start-up is also shown apart). CPU and peak RSS are the
worker processes' own (CPU: ``wait4`` after SIGTERM; RSS: VmHWM of each process), start-up
included.

emailq also shows critical isolation in the same run: when ~20% of the bulk is sent, 200
critical emails are queued at once; each one's latency is its settle time (``updated_at``
once SENT) minus the start of the enqueue call, an upper bound on its arrival at the sink.

``--profile`` also prints where emailq's first worker spends its CPU time (py-spy when it
is installed, else cProfile; benchmarks/peers/profiling.py). No figure is asserted: the
targets are printed as met or BELOW.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from emailq.broker import Broker, NewMessage, State, open_broker
from emailq.lanes import Lane
from emailq.message import parse_email
from peers.harness import (
    BenchmarkFailed,
    Drain,
    Usage,
    Workers,
    deadline,
    drain,
    enqueue_timeout,
    smtp_sink,
)
from peers.profiling import Profiler, profiler_for
from peers.workload import ceremony_change, invitation
from webhook_receiver import WebhookRun, compare

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARQ_VENV = ROOT / ".venv" / "peer-arq"  # arq pins redis<6: it cannot share emailq's venv
ARQ_REQUIREMENTS = HERE / "peers" / "requirements-arq.txt"
REDIS_URL = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PEER_DB = 13  # Celery's and arq's queues; flushed before and after each peer
COUNTER = "bench:done"  # the peers INCR it after each email the sink accepted

ENQUEUE_BATCH = 1_000
CRITICAL_N = 200
CRITICAL_AT = 0.2  # share of the bulk sent when the critical emails arrive
SMTP_POOL = 8
CELERY_PREFETCH = 16  # many short tasks: Celery's docs advise a multiplier above the default 4
ARQ_MAX_JOBS = 8  # benchmarks/peers/arq_app.py: one SMTP connection per job slot

DRAIN_TARGETS = {"emailq-redis": 100_000, "emailq-sqlite": 60_000}  # emails/min
RSS_TARGET_MB = 150
CRITICAL_P99_TARGET_MS = 250


@dataclass
class Result:
    name: str
    how: str = ""  # how the system ran, for the notes
    enqueue_per_s: float = 0.0
    drain: Drain | None = None
    usage: Usage = field(default_factory=Usage)
    critical_ms: list[float] = field(default_factory=list)
    critical_missing: int = 0
    critical_after: float = 0.0  # share of the bulk sent when the critical mail was queued
    error: str | None = None

    @property
    def cpu_per_1k(self) -> float:
        return self.usage.cpu_s / self.drain.total * 1000 if self.drain else 0.0


# -- emailq ---------------------------------------------------------------------------------


def emailq_url(backend: str, tmp: Path) -> str:
    if backend == "redis":
        return f"{REDIS_URL}?prefix=emailq-bench-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp / 'queue.db'}"  # default settings: synchronous=full


def enqueue_emails(broker: Broker, work: Sequence[dict[str, str]], lane: Lane) -> list[str]:
    """The intake path an application takes: validate, serialise, enqueue in batches."""
    ids: list[str] = []
    for start in range(0, len(work), ENQUEUE_BATCH):
        messages = [
            NewMessage(parse_email(fields).to_payload(), lane=lane)
            for fields in work[start : start + ENQUEUE_BATCH]
        ]
        ids += broker.enqueue_many(messages)
    return ids


def timed_emailq_enqueue(broker: Broker, n: int) -> float:
    """Emails/s through ``enqueue_emails``, the workload built beforehand (as for the peers)."""
    work = [invitation(i) for i in range(n)]
    with deadline(enqueue_timeout(n), f"enqueueing {n:,} emails"):
        started = time.perf_counter()
        enqueue_emails(broker, work, Lane.BULK)
        return n / (time.perf_counter() - started)


def emailq_commands(
    url: str, port: int, workers: int, profiler: Profiler | None
) -> list[list[str]]:
    args = [
        "worker", "--broker-url", url, "--provider-url", f"smtp://127.0.0.1:{port}?pool={SMTP_POOL}",
        "--batch", "100", "--concurrency", "2",
    ]  # fmt: skip
    commands = [[sys.executable, "-m", "emailq", *args] for _ in range(workers)]
    if profiler:
        commands[0] = profiler.command(args)
    return commands


class CriticalProbe:
    """Queues the critical emails once ~20% of the bulk is sent, and remembers when."""

    def __init__(self, broker: Broker, bulk: int) -> None:
        self.broker, self.bulk = broker, bulk
        self.threshold = max(1, int(bulk * CRITICAL_AT))
        self.work = [ceremony_change(i) for i in range(CRITICAL_N)]
        self.ids: list[str] = []
        self.enqueued_at = 0.0
        self.sent_then = 0  # bulk emails already sent when the critical ones were queued

    def __call__(self, sent: int) -> None:
        if not self.ids and sent >= self.threshold:
            self.enqueued_at, self.sent_then = time.time(), sent  # the broker's clock: time()
            self.ids = enqueue_emails(self.broker, self.work, Lane.CRITICAL)

    def latencies_ms(self) -> tuple[list[float], int]:
        """Settle time − enqueue time of each critical email, and how many were not sent."""
        latencies, missing = [], 0
        for message_id in self.ids:
            info = self.broker.get(message_id)
            if info is None or info.state is not State.SENT:
                missing += 1
            else:
                latencies.append((info.updated_at - self.enqueued_at) * 1000)
        return latencies, missing + CRITICAL_N - len(self.ids)


def sent_or_fail(broker: Broker) -> int:
    stats = broker.stats()
    if dead := stats.count(State.DEAD):
        raise BenchmarkFailed(f"{dead} emails went dead (see `emailq get` for the error)")
    return stats.count(State.SENT)


def run_emailq(
    backend: str,
    args: argparse.Namespace,
    port: int,
    tmp: Path,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    webhooks: WebhookRun | None = None,
) -> Result:
    """``env``: the workers' environment (default ours); ``extra``: one more emailq command
    started beside them on the same queue (benchmarks/monitor.py: ``monitor``); ``webhooks``:
    an endpoint for every event and its receiver (benchmarks/webhook_receiver.py)."""
    name, url = f"emailq-{backend}", emailq_url(backend, tmp)
    how = f"{args.workers} × `emailq worker --batch 100 --concurrency 2`, SMTP pool {SMTP_POOL}"
    result = Result(name, how=how)
    profiler = profiler_for(name, tmp) if args.profile else None
    with open_broker(url) as broker:
        try:
            if webhooks:
                webhooks.start(url)
            result.enqueue_per_s = timed_emailq_enqueue(broker, args.n)
            commands = emailq_commands(url, port, args.workers, profiler)
            if extra:
                commands.append([sys.executable, "-m", "emailq", *extra, "--broker-url", url])
            probe = CriticalProbe(broker, args.n)
            deliver_emailq(Workers(name, tmp), commands, probe, result, profiler, env)
            result.critical_ms, result.critical_missing = probe.latencies_ms()
            result.critical_after = probe.sent_then / args.n
            if webhooks:
                webhooks.finish()  # waits for every email.sent event to arrive
        finally:
            if webhooks:
                webhooks.close()
            broker.purge()
    if profiler:
        profiler.report(name)
    return result


def deliver_emailq(
    workers: Workers,
    commands: list[list[str]],
    probe: CriticalProbe,
    result: Result,
    profiler: Profiler | None,
    env: dict[str, str] | None = None,
) -> None:
    """Start the workers, let the probe inject the critical mail, time the drain, stop."""
    broker = probe.broker
    try:
        workers.start(commands, ROOT, env if env is not None else dict(os.environ))
        if profiler:
            profiler.attach(workers.procs[0].pid)
        total = probe.bulk + CRITICAL_N
        result.drain = drain(workers, lambda: sent_or_fail(broker), total, probe)
        if profiler:
            profiler.detach()  # before the worker stops: py-spy must see it alive
        result.usage = workers.stop()
    finally:
        if profiler:
            profiler.detach()
        workers.kill()


# -- peers ----------------------------------------------------------------------------------


def peer_redis_url() -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{PEER_DB}", "", ""))


def arq_python() -> Path:
    """The arq venv's interpreter, built from requirements-arq.txt when missing or stale."""
    python, stamp = ARQ_VENV / "bin" / "python", ARQ_VENV / "requirements.txt"
    wanted = ARQ_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"building the arq peer's venv in {ARQ_VENV}", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(ARQ_VENV)], check=True, timeout=120
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(ARQ_REQUIREMENTS)],
            check=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise BenchmarkFailed(f"could not build the arq venv: {error}") from None
    stamp.write_text(wanted)
    return python


def peer_python(peer: str) -> str:
    return str(arq_python()) if peer == "arq" else sys.executable


def peer_commands(peer: str, workers: int) -> tuple[list[list[str]], str]:
    """A peer's worker commands, and how they run (for the notes)."""
    python = peer_python(peer)
    if peer == "celery":
        command = [
            python, "-m", "celery", "-A", "peers.celery_app", "worker", "--pool", "prefork",
            "-c", str(workers), "--prefetch-multiplier", str(CELERY_PREFETCH), "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        how = (
            f"one `celery worker --pool prefork -c {workers}` (a consumer + {workers} pool "
            f"processes), prefetch ×{CELERY_PREFETCH}, smtplib, one connection per process"
        )
        return [command], how
    command = [python, "-m", "arq", "peers.arq_app.WorkerSettings"]
    how = (
        f"{workers} × `arq` worker processes, max_jobs {ARQ_MAX_JOBS}, aiosmtplib, one "
        "connection per job slot"
    )
    return [command] * workers, how


def timed_peer_enqueue(peer: str, n: int, env: dict[str, str]) -> float:
    """Emails/s, enqueued by the peer's own client in its own process (arq has its own venv)."""
    command = [peer_python(peer), "-m", f"peers.{peer}_app", "enqueue", str(n)]
    try:
        done = subprocess.run(
            command, cwd=HERE, env=env, capture_output=True, text=True, timeout=enqueue_timeout(n)
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkFailed(
            f"{peer}: enqueueing {n:,} emails took over {enqueue_timeout(n):.0f} s"
        ) from None
    if done.returncode:
        raise BenchmarkFailed(f"{peer}: enqueue failed\n{done.stderr[-2000:]}")
    return n / float(json.loads(done.stdout.splitlines()[-1])["seconds"])


def run_peer(peer: str, args: argparse.Namespace, port: int, tmp: Path) -> Result:
    url = peer_redis_url()
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_SMTP": f"127.0.0.1:{port}",
        "BENCH_COUNTER": COUNTER,
        "PYTHONPATH": str(HERE),
    }
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        commands, how = peer_commands(peer, args.workers)
        result = Result(peer, how=how)
        result.enqueue_per_s = timed_peer_enqueue(peer, args.peer_n, env)
        workers = Workers(peer, tmp)
        try:
            workers.start(commands, HERE, env)
            result.drain = drain(workers, lambda: int(client.get(COUNTER) or 0), args.peer_n)
            result.usage = workers.stop()
        finally:
            workers.kill()
        return result
    finally:
        client.flushdb()
        client.close()


# -- report ---------------------------------------------------------------------------------


def print_table(results: Sequence[Result]) -> None:
    print(
        f"\n{'system':<14} {'enqueue/s':>10} {'drain emails/min':>17} {'CPU s/1k':>9} "
        f"{'peak RSS MB':>12} {'all procs MB':>13} {'start-up s':>11}"
    )
    for r in results:
        if r.error or not r.drain:
            print(f"{r.name:<14} FAILED: {(r.error or 'no result').splitlines()[0]}")
            continue
        print(
            f"{r.name:<14} {r.enqueue_per_s:>10,.0f} {r.drain.per_minute:>17,.0f} "
            f"{r.cpu_per_1k:>9.2f} {r.usage.largest_rss_mb:>12.0f} "
            f"{r.usage.total_rss_mb:>9.0f} ({r.usage.processes}) {r.drain.startup_s:>11.1f}"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: with 200 values, p99 is the second largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ours(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.name.startswith("emailq-") and r.drain and not r.error]


def print_critical(results: Sequence[Result]) -> None:
    print(
        f"\nCritical isolation: {CRITICAL_N} critical emails queued at once when "
        f"~{CRITICAL_AT:.0%} of the bulk was sent.\nLatency: settled (updated_at once SENT) "
        "minus the start of the enqueue call, an upper bound on arrival at the sink."
    )
    for r in ours(results):
        ms = r.critical_ms
        if not ms:
            print(f"  {r.name:<14} no critical email was sent ({r.critical_missing} missing)")
            continue
        print(
            f"  {r.name:<14} p50 {statistics.median(ms):.0f} ms, p99 {percentile(ms, 0.99):.0f}"
            f" ms, max {max(ms):.0f} ms ({len(ms)}/{CRITICAL_N} sent; queued when "
            f"{r.critical_after:.0%} of the bulk was sent)"
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "BELOW"


def print_targets(results: Sequence[Result]) -> None:
    print("\nTargets:")
    for r in ours(results):
        rate = r.drain.per_minute if r.drain else 0.0
        target = DRAIN_TARGETS[r.name]
        print(f"  {r.name} drain >= {target:,}/min: {verdict(rate >= target)} ({rate:,.0f})")
        rss = r.usage.largest_rss_mb
        print(
            f"  {r.name} worker peak RSS < {RSS_TARGET_MB} MB: "
            f"{verdict(rss < RSS_TARGET_MB)} ({rss:.0f} MB)"
        )
        p99 = percentile(r.critical_ms, 0.99) if r.critical_ms else float("inf")
        ok = p99 <= CRITICAL_P99_TARGET_MS and not r.critical_missing
        print(
            f"  {r.name} critical p99 <= {CRITICAL_P99_TARGET_MS} ms: {verdict(ok)} ({p99:.0f} ms)"
        )


def print_notes(results: Sequence[Result], args: argparse.Namespace) -> None:
    print("\nHow each system ran:")
    for r in results:
        print(f"  {r.name:<14} {r.how or 'did not run'}")
    if ours(results):
        print(f"emailq delivers {args.n:,} bulk + {CRITICAL_N} critical emails per backend.")
    if any(not r.name.startswith("emailq-") for r in results):
        print(f"Each peer delivers {args.peer_n:,} emails.")
    print(
        "Drain, CPU s/1k and RSS include start-up (drain: workers' start to last delivery)."
        "\nPeak RSS: the largest worker process; all procs: every process of the workers at "
        "its own peak\n(how many processes)."
    )
    if args.profile:
        print("This run was profiled: worker 0's figures include the profiler's overhead.")
    for r in results:
        if r.error:
            print(f"\n{r.name} FAILED:\n{r.error}")


# -- main -----------------------------------------------------------------------------------


def unavailable(system: str) -> str | None:
    """Why a system cannot run here, or None."""
    if system != "emailq-sqlite":
        try:
            redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
        except redis.RedisError as error:
            return f"Redis at {REDIS_URL} does not answer ({error})"
    if system == "emailq-redis" and importlib.util.find_spec("emailq.broker.redis") is None:
        return "src/emailq/broker/redis.py is not there yet"
    return None


def run_system(system: str, args: argparse.Namespace, port: int) -> Result:
    print(f"running {system} ...", flush=True)
    if reason := unavailable(system):
        return Result(system, error=reason)
    with tempfile.TemporaryDirectory(prefix=f"e2e-{system}-") as tmp:
        try:
            if system.startswith("emailq-"):
                return run_emailq(system.removeprefix("emailq-"), args, port, Path(tmp))
            return run_peer(system, args, port, Path(tmp))
        except BenchmarkFailed as error:
            return Result(system, error=str(error))
        except Exception as error:  # a bug in one system must not lose the others' figures
            where = "".join(traceback.format_exception(error, limit=-4))
            return Result(system, error=f"{type(error).__name__}: {error}\n{where}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="bulk emails for emailq")
    parser.add_argument("--backends", default="redis,sqlite", help="emailq brokers to measure")
    parser.add_argument("--peers", default="arq,celery", help="peers to measure ('' for none)")
    parser.add_argument("--peer-n", type=int, default=100_000, help="emails for each peer")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print where emailq's first worker spends its CPU time",
    )
    parser.add_argument(
        "--webhooks",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="emailq with and without a webhook endpoint for every event, interleaved",
    )
    args = parser.parse_args()
    if min(args.n, args.peer_n, args.workers) < 1:
        parser.error("--n, --peer-n and --workers must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    if args.webhooks:  # benchmarks/webhook_receiver.py
        return compare(args, run_emailq, CRITICAL_N)
    systems = [f"emailq-{b}" for b in args.backends.split(",") if b]
    systems += [p for p in args.peers.split(",") if p]
    if unknown := set(systems) - {"emailq-redis", "emailq-sqlite", "arq", "celery"}:
        sys.exit(f"unknown backend or peer: {', '.join(sorted(unknown))}")
    with smtp_sink() as port:
        print(
            f"~1.5 KB invitations (text + HTML, one recipient each), {args.workers} worker "
            f"processes per system, into Postfix smtp-sink on 127.0.0.1:{port}"
        )
        results = [run_system(system, args, port) for system in systems]
    print_table(results)
    if ours(results):
        print_critical(results)
        print_targets(results)
    print_notes(results, args)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
