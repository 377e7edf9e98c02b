"""End-to-end delivery: emailq's workers against Celery and arq, into one SMTP sink.

    .venv/bin/python benchmarks/e2e.py [--n 100000] [--backends redis,sqlite]
        [--peers arq,celery] [--peer-n 100000] [--workers 2] [--repeat 1]
        [--relay-ms 0] [--pool auto[,16,...]] [--profile]

Every system gets the same ~1.5 KB invitations (text + HTML, one distinct recipient each,
benchmarks/peers/workload.py), the same number of worker processes and the same receiving
end: benchmarks/sinkclock.c, a C responder as cheap as Postfix's smtp-sink that also notes
when each Message-ID arrives. All mail is queued first (timed: enqueue/s), then the workers
start and the drain is timed from their start to the last delivery (start-up is also shown
apart). CPU and peak RSS are the worker processes' own (CPU: ``wait4`` after SIGTERM; RSS:
VmHWM of each process), start-up included.

Critical isolation in the same run (benchmarks/critical.py): when ~20% of the bulk is sent,
200 critical emails are queued at once (emailq: the critical lane; each peer: its dedicated
queue); each one's latency is its arrival at the sink minus the time it was queued.

``--repeat R`` runs every system R times, interleaved (a, b, c, a, b, c, ...), and prints
medians and ranges. ``--relay-ms 5`` makes the sink wait before every reply, as a relay in
the same region would; ``--pool auto,16,32`` measures emailq at each SMTP pool size
(``auto``, the default: no ``?pool=``, the pool sizes itself). ``--profile`` also prints
where emailq's first worker spends its CPU time (benchmarks/peers/profiling.py). No figure
is asserted: targets print as met or BELOW.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from critical import CRITICAL_N, EmailqProbe, PeerProbe, Probe, enqueue_emails
from e2e_report import (
    AUTO,
    Result,
    pool_name,
    print_notes,
    print_relay,
    print_runs,
    print_summary,
    print_targets,
)
from emailq.broker import Broker, State, open_broker
from emailq.lanes import Lane
from peers.harness import (
    BenchmarkFailed,
    Workers,
    deadline,
    drain,
    enqueue_timeout,
)
from peers.profiling import Profiler, profiler_for
from peers.workload import invitation
from sinkclock import SinkClock, sink_clock
from webhook_receiver import WebhookRun, compare

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARQ_VENV = ROOT / ".venv" / "peer-arq"  # arq pins redis<6: it cannot share emailq's venv
ARQ_REQUIREMENTS = HERE / "peers" / "requirements-arq.txt"
REDIS_URL = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PEER_DB = 13  # Celery's and arq's queues; flushed before and after each peer
COUNTER = "bench:done"  # the peers INCR it after each email the sink accepted

CELERY_PREFETCH = 16  # many short tasks: Celery's docs advise a multiplier above the default 4
ARQ_MAX_JOBS = 8  # benchmarks/peers/arq_app.py: one SMTP connection per job slot
SYSTEMS = ("emailq-redis", "emailq-sqlite", "arq", "celery")


# -- emailq ---------------------------------------------------------------------------------


def emailq_url(backend: str, tmp: Path) -> str:
    if backend == "redis":
        return f"{REDIS_URL}?prefix=emailq-bench-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp / 'queue.db'}"  # default settings: synchronous=full


def timed_emailq_enqueue(broker: Broker, n: int) -> float:
    """Emails/s through ``enqueue_emails``, the workload built beforehand (as for the peers)."""
    work = [invitation(i) for i in range(n)]
    with deadline(enqueue_timeout(n), f"enqueueing {n:,} emails"):
        started = time.perf_counter()
        enqueue_emails(broker, work, Lane.BULK)
        return n / (time.perf_counter() - started)


def emailq_commands(
    url: str, port: int, workers: int, profiler: Profiler | None, pool: int = AUTO
) -> list[list[str]]:
    provider = f"smtp://127.0.0.1:{port}" + (f"?pool={pool}" if pool != AUTO else "")
    args = [
        "worker", "--broker-url", url, "--provider-url", provider,
        "--batch", "100", "--concurrency", "2",
    ]  # fmt: skip
    commands = [[sys.executable, "-m", "emailq", *args] for _ in range(workers)]
    if profiler:
        commands[0] = profiler.command(args)
    return commands


def sent_or_fail(broker: Broker) -> int:
    stats = broker.stats()
    if dead := stats.count(State.DEAD):
        raise BenchmarkFailed(f"{dead} emails went dead (see `emailq get` for the error)")
    return stats.count(State.SENT)


class Watch:
    """Called on every poll of a drain: the critical probe, and the sink's connection count."""

    def __init__(self, probe: Probe, sink: SinkClock | None) -> None:
        self.probe, self.sink = probe, sink
        self.peak_connections = 0

    def __call__(self, sent: int) -> None:
        self.probe(sent)
        if self.sink:
            self.peak_connections = max(self.peak_connections, self.sink.connections())


def run_emailq(
    backend: str,
    args: argparse.Namespace,
    port: int,
    tmp: Path,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    sink: SinkClock | None = None,
    pool: int = AUTO,
    webhooks: WebhookRun | None = None,
) -> Result:
    """``env``: the workers' environment (default ours); ``extra``: one more emailq command
    started beside them on the same queue (benchmarks/monitor.py: ``monitor``); ``sink``: the
    responder on ``port`` when it clocks arrivals (then the critical latencies are measured);
    ``webhooks``: an endpoint for every event and its receiver (benchmarks/webhook_receiver.py)."""
    name, url = f"emailq-{backend}", emailq_url(backend, tmp)
    how = (f"{args.workers} × `emailq worker --batch 100 --concurrency 2`, "
           f"SMTP pool {pool_name(pool)}")  # fmt: skip
    result = Result(name, backend=backend, pool=pool, how=how)
    profiler = profiler_for(name, tmp) if args.profile else None
    with open_broker(url) as broker:
        try:
            if webhooks:
                webhooks.start(url)
            result.enqueue_per_s = timed_emailq_enqueue(broker, args.n)
            commands = emailq_commands(url, port, args.workers, profiler, pool)
            if extra:
                commands.append([sys.executable, "-m", "emailq", *extra, "--broker-url", url])
            probe = EmailqProbe(broker, args.n)
            watch = Watch(probe, sink)
            deliver_emailq(Workers(name, tmp), commands, watch, result, profiler, env)
            result.peak_connections = watch.peak_connections
            if sink:
                result.critical = probe.result(sink)
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
    watch: Watch,
    result: Result,
    profiler: Profiler | None,
    env: dict[str, str] | None = None,
) -> None:
    """Start the workers, let the probe inject the critical mail, time the drain, stop."""
    assert isinstance(watch.probe, EmailqProbe)
    broker = watch.probe.broker
    try:
        workers.start(commands, ROOT, env if env is not None else dict(os.environ))
        if profiler:
            profiler.attach(workers.procs[0].pid)
        total = watch.probe.bulk + CRITICAL_N
        result.drain = drain(workers, lambda: sent_or_fail(broker), total, watch)
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
            python, "-m", "celery", "-A", "peers.celery_app", "worker", "-Q", "critical,celery",
            "--pool", "prefork", "-c", str(workers), "--prefetch-multiplier",
            str(CELERY_PREFETCH), "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        how = (
            f"one `celery worker --pool prefork -c {workers}` (a consumer + {workers} pool "
            f"processes), prefetch ×{CELERY_PREFETCH}, smtplib, one connection per process; "
            "critical: a dedicated queue the worker polls first"
        )
        return [command], how
    bulk = [python, "-m", "arq", "peers.arq_app.WorkerSettings"]
    critical = [python, "-m", "arq", "peers.arq_app.CriticalWorkerSettings"]
    how = (
        f"{workers} × `arq` worker processes, max_jobs {ARQ_MAX_JOBS}, aiosmtplib, one "
        "connection per job slot; critical: a dedicated queue with a worker of its own "
        "(one process more)"
    )
    return [bulk] * workers + [critical], how


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


def run_peer(peer: str, args: argparse.Namespace, sink: SinkClock, tmp: Path) -> Result:
    url = peer_redis_url()
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_SMTP": f"127.0.0.1:{sink.port}",
        "BENCH_COUNTER": COUNTER,
        "PYTHONPATH": str(HERE),
    }
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        commands, how = peer_commands(peer, args.workers)
        result = Result(peer, how=how)
        result.enqueue_per_s = timed_peer_enqueue(peer, args.peer_n, env)
        probe = PeerProbe(peer, peer_python(peer), HERE, env, args.peer_n)
        watch = Watch(probe, sink)
        workers = Workers(peer, tmp)
        try:
            workers.start(commands, HERE, env)
            total = args.peer_n + CRITICAL_N
            result.drain = drain(workers, lambda: int(client.get(COUNTER) or 0), total, watch)
            result.usage = workers.stop()
        finally:
            workers.kill()
            if probe.proc and probe.proc.poll() is None:
                probe.proc.kill()
        result.peak_connections = watch.peak_connections
        result.critical = probe.result(sink)
        return result
    finally:
        client.flushdb()
        client.close()


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


def run_system(
    system: str, pool: int, label: str, args: argparse.Namespace, sink: SinkClock
) -> Result:
    print(f"running {label} ...", flush=True)
    if reason := unavailable(system):
        return Result(system, label=label, error=reason)
    sink.start_run()
    with tempfile.TemporaryDirectory(prefix=f"e2e-{system}-") as tmp:
        try:
            if system.startswith("emailq-"):
                backend = system.removeprefix("emailq-")
                result = run_emailq(backend, args, sink.port, Path(tmp), sink=sink, pool=pool)
            else:
                result = run_peer(system, args, sink, Path(tmp))
        except BenchmarkFailed as error:
            result = Result(system, error=str(error))
        except Exception as error:  # a bug in one system must not lose the others' figures
            where = "".join(traceback.format_exception(error, limit=-4))
            result = Result(system, error=f"{type(error).__name__}: {error}\n{where}")
    result.label = label
    return result


def plan(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """One round: (system, pool, label) for each run, emailq at each pool size."""
    runs = []
    for backend in filter(None, args.backends.split(",")):
        for pool in args.pool:
            label = f"emailq-{backend}" + (f" pool {pool_name(pool)}" if len(args.pool) > 1 else "")
            runs.append((f"emailq-{backend}", pool, label))
    runs += [(peer, 0, peer) for peer in filter(None, args.peers.split(","))]
    return runs


def pool_sizes(text: str) -> list[int]:
    """``auto,16,32`` → [AUTO, 16, 32]."""
    try:
        sizes = [AUTO if size == "auto" else int(size) for size in text.split(",") if size]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < AUTO:
        raise argparse.ArgumentTypeError("pool sizes: auto or positive integers, comma-separated")
    return sizes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="bulk emails for emailq")
    parser.add_argument("--backends", default="redis,sqlite", help="emailq brokers to measure")
    parser.add_argument("--peers", default="arq,celery", help="peers to measure ('' for none)")
    parser.add_argument("--peer-n", type=int, default=100_000, help="bulk emails for each peer")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds of all runs")
    parser.add_argument(
        "--relay-ms", type=float, default=0.0, help="the sink waits this long before each reply"
    )
    parser.add_argument(
        "--pool",
        type=pool_sizes,
        default=[AUTO],
        help="emailq's SMTP pool sizes to measure, e.g. auto,16,32 (default auto: no ?pool=)",
    )
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
    parser.add_argument(
        "--webhooks-base",
        metavar="SRC",
        help="with --webhooks: also emailq webhooks from another tree's src (before/after)",
    )
    args = parser.parse_args()
    if min(args.n, args.peer_n, args.workers, args.repeat) < 1:
        parser.error("--n, --peer-n, --workers and --repeat must be at least 1")
    if args.relay_ms < 0:
        parser.error("--relay-ms cannot be negative")
    systems = {system for system, _, _ in plan(args)}
    if unknown := systems - set(SYSTEMS):
        parser.error(f"unknown backend or peer: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    if args.webhooks:  # benchmarks/webhook_receiver.py
        return compare(args, run_emailq, CRITICAL_N)
    runs = plan(args)
    with sink_clock(args.relay_ms) as sink:
        relay = f", {args.relay_ms:g} ms before each reply" if args.relay_ms else ""
        print(
            f"~1.5 KB invitations (text + HTML, one recipient each), {args.workers} worker "
            f"processes per system, into sinkclock on 127.0.0.1:{sink.port}{relay}; "
            f"{args.repeat} round(s)"
        )
        results = []
        for round_ in range(args.repeat):
            if args.repeat > 1:
                print(f"round {round_ + 1}/{args.repeat}", flush=True)
            results += [run_system(system, pool, label, args, sink) for system, pool, label in runs]
    print_runs(results)
    print_summary(results, args.repeat)
    print_targets(results, args.relay_ms)
    if args.relay_ms:
        print_relay(results, args.relay_ms, AUTO)
    print_notes(results, args.n, args.peer_n, args.profile)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
