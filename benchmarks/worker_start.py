"""How soon does a new worker deliver, and how much memory does `emailq run -n 2` hold?

1. Worker start → first delivery: with a few emails queued, start a worker process and
   time from just before the start to the first email's arrival at the built-in SMTP sink
   (on this process's thread). Median of ``--starts`` starts, with the range, per broker,
   for each way a worker is started: ``emailq worker`` (the command line) and, where it
   exists, the supervisor's own worker entry (``python -m emailq.worker_process``).
2. `emailq run -n 2` at full speed into the built-in sink: the resident memory of each
   process of the group (supervisor, its helpers, each worker) and the total, sampled
   while the queue drains, after a short warm-up run has written the bytecode cache.

Usage: benchmarks/worker_start.py [--starts 10] [--backends sqlite,redis]
[--rss-messages 20000] [--skip-start] [--skip-rss]. Run under
``flock /tmp/emailq-bench.lock`` (it loads both cores for about a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from emailq.broker import NewMessage, open_broker
from emailq.message import parse_email
from emailq.sink import SmtpSink
from peers.harness import descendants, stop

REDIS = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
WORKER_ENTRY = "emailq.worker_process"  # the supervisor's worker entry (where it exists)


def payloads(n: int, tag: str) -> list[bytes]:
    return [
        parse_email({"from": "planner@weddings.example", "to": f"guest{i}@example.org",
                     "subject": f"Invitation {tag} {i}", "text": "You are invited.\n" * 60})
        .to_payload()
        for i in range(n)
    ]  # fmt: skip


PYCACHE = tempfile.mkdtemp(prefix="worker-start-pycache-")


def clean_env() -> dict[str, str]:
    """This environment without EMAILQ_* settings (the flags given say everything), and
    with bytecode cached as an installed package has it (in a folder of this run's: the
    warm-up start writes it), unless --no-pyc keeps PYTHONDONTWRITEBYTECODE as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    if PYCACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    env["EMAILQ_PRIVACY_HASH_SECRET"] = "bench"  # no warning on every start
    env["EMAILQ_MONITOR_ENABLED"] = os.environ.get("EMAILQ_MONITOR_ENABLED", "true")
    return env


@contextlib.contextmanager
def fresh_queue(backend: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="worker-start-") as tmp:
        url = (
            f"sqlite:///{tmp}/q.db"
            if backend == "sqlite"
            else f"{REDIS}?prefix=bench-start-{uuid.uuid4().hex[:8]}"
        )
        try:
            yield url
        finally:
            with open_broker(url) as broker:
                broker.purge()


Starter = Callable[[], "subprocess.Popen[bytes]"]


def worker_starters(url: str, provider: str) -> dict[str, Starter]:
    """Each way of starting one worker process, by name."""
    flags = ["--broker-url", url, "--provider-url", provider]
    command = [sys.executable, "-m", "emailq", "worker", *flags]
    starters: dict[str, Starter] = {
        "emailq worker": lambda: subprocess.Popen(
            command, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    }
    if importlib.util.find_spec(WORKER_ENTRY) is not None:  # as `emailq run` starts one
        from emailq.settings import Settings
        from emailq.supervisor import Launch

        settings = Settings.load(flags={"broker": {"url": url}, "provider": {"url": provider}},
                                 environ=clean_env())  # fmt: skip
        starters[f"python -m {WORKER_ENTRY}"] = partial(Launch.of(settings).start, 0)
    return starters


def first_delivery_s(start: Starter, url: str, sink: SmtpSink, tag: str) -> float:
    """Seconds from ``start()`` to the first email's arrival at the sink."""
    with open_broker(url) as broker:
        broker.purge()
        broker.enqueue_many([NewMessage(p) for p in payloads(20, tag)])
    before = sink.count
    started = time.time()
    proc = start()
    try:
        if not sink.wait_for(before + 1, timeout=60):
            stop(proc, 30)
            error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            sys.exit(f"no delivery within 60 s from {proc.args!r}\n{error[-2000:]}")
        arrived = sink.deliveries[before].received_at
    finally:
        stop(proc, 30)
    return arrived - started


def start_times(backends: list[str], starts: int) -> None:
    print(f"worker start → first delivery at the built-in sink ({starts} starts, after 1 warm-up)")
    with SmtpSink() as sink:
        provider = f"smtp://127.0.0.1:{sink.port}?pool=8"
        for backend in backends:
            with fresh_queue(backend) as url:
                for name, start in worker_starters(url, provider).items():
                    first_delivery_s(start, url, sink, "warm-up")  # the file cache, Redis
                    times = [
                        first_delivery_s(start, url, sink, str(i)) * 1000 for i in range(starts)
                    ]
                    print(f"  {backend:<6} {name:<34} median {statistics.median(times):5.0f} ms"
                          f"  (range {min(times):.0f}–{max(times):.0f} ms)")  # fmt: skip


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "resource_tracker" in cmdline:
            return "resource tracker"
    return "worker"


def start_group(url: str, sink: SmtpSink) -> subprocess.Popen[bytes]:
    """`emailq run -n 2` on ``url``, delivering into ``sink``."""
    provider = f"smtp://127.0.0.1:{sink.port}?pool=8"
    command = [sys.executable, "-m", "emailq", "run", "-n", "2",
               "--broker-url", url, "--provider-url", provider]  # fmt: skip
    return subprocess.Popen(command, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def warm_bytecode(backend: str, messages: int = 400) -> None:
    """A short `emailq run -n 2` first, writing this run's bytecode cache, so that the
    measured group loads its modules as an installed package does. A worker that compiles
    its ~400 modules from source instead keeps ~15 MB more for good (the compiler's
    leftovers scattered through its heap)."""
    if not PYCACHE:  # --no-pyc: every start compiles, as asked
        return
    with fresh_queue(backend) as url, SmtpSink() as sink:
        with open_broker(url) as broker:
            broker.enqueue_many([NewMessage(p) for p in payloads(messages, "warm-up")])
        proc = start_group(url, sink)
        try:
            if not sink.wait_for(messages, timeout=60):
                sys.exit(f"{backend}: the warm-up `emailq run -n 2` did not deliver in 60 s")
        finally:
            stop(proc, 30)


def group_memory(backend: str, messages: int, seconds: float) -> None:
    """Drain ``messages`` with `emailq run -n 2` into the built-in sink; sample RSS."""
    warm_bytecode(backend)
    with fresh_queue(backend) as url, SmtpSink() as sink:
        with open_broker(url) as broker:
            data = payloads(messages, "rss")
            for start in range(0, messages, 1000):
                broker.enqueue_many([NewMessage(p) for p in data[start : start + 1000]])
        proc = start_group(url, sink)
        samples: dict[int, list[int]] = {}
        roles: dict[int, str] = {}
        try:
            if not sink.wait_for(1, timeout=60):
                sys.exit(f"{backend}: `emailq run -n 2` delivered nothing within 60 s")
            time.sleep(2)  # past the start: both workers at full speed
            first_count, first_at = sink.count, time.monotonic()
            until = first_at + seconds
            while time.monotonic() < until and sink.count < messages:
                for pid in descendants(proc.pid):
                    samples.setdefault(pid, []).append(rss_kb(pid))
                    roles.setdefault(pid, role(pid, proc.pid))
                time.sleep(0.25)
            rate = (sink.count - first_count) / (time.monotonic() - first_at) * 60
        finally:
            stop(proc, 30)
    print(f"  {backend}: `emailq run -n 2` draining {messages:,} emails at {rate:,.0f}/min "
          f"(RSS, median of {max(map(len, samples.values()))} samples)")  # fmt: skip
    total = 0.0
    for pid, values in samples.items():
        mb = statistics.median(v for v in values if v) / 1024
        total += mb
        print(f"    {roles[pid]:<17} pid {pid:<8} {mb:6.1f} MB")
    print(f"    {'total':<17} {'':<12} {total:6.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--rss-messages", type=int, default=20_000)
    parser.add_argument("--rss-seconds", type=float, default=10.0)
    parser.add_argument("--skip-start", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--no-pyc", action="store_true", help="compile on every start")
    args = parser.parse_args()
    global PYCACHE
    if args.no_pyc:
        PYCACHE = ""
    else:  # and for the workers the supervisor's Launch starts with this environment
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = PYCACHE
    backends = args.backends.split(",")
    cache = "none (compiled on every start)" if args.no_pyc else "cached (as installed)"
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, bytecode {cache}")
    if not args.skip_start:
        start_times(backends, args.starts)
    if not args.skip_rss:
        print("memory of `emailq run -n 2` at full speed into the built-in sink")
        for backend in backends:
            group_memory(backend, args.rss_messages, args.rss_seconds)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(PYCACHE, ignore_errors=True)
