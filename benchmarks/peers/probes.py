"""What a benchmark can read about the processes it started, besides wall-clock time: CPU
seconds from /proc, Redis commands from a private ``redis-server`` (so no other user's
commands or CPU count), and the garbage collector's pauses inside a Python server
(``serve_probe.py``). On a shared machine these move far less than latencies do.

Standard library (and redis-py) only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from peers.harness import descendants, free_port

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process and its live descendants."""
    total = 0.0
    for each in descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def runqueue_wait_s(pid: int, descendants_too: bool = True) -> float:
    """Seconds the live threads of a process (and its descendants) have spent runnable but
    waiting for a core (/proc/PID/task/TID/schedstat, second field)."""
    total = 0
    for each in descendants(pid) if descendants_too else [pid]:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{each}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


@contextlib.contextmanager
def private_redis(maxmemory_mb: int = 8000) -> Iterator[str]:
    """A ``redis-server`` of our own on a free port, without persistence; its URL (db 0)."""
    program = shutil.which("redis-server")
    if program is None:
        sys.exit("redis-server is not installed (Debian's redis-server package)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", tmp, "--maxmemory", f"{maxmemory_mb}mb",
                   "--maxmemory-policy", "noeviction"]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            until = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > until or proc.poll() is not None:
                        sys.exit("the private redis-server did not start")
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url.partition("?")[0])  # without emailq's ?prefix=


def redis_server_pid(url: str) -> int:
    return int(_client(url).info("server")["process_id"])


def redis_calls(url: str) -> dict[str, int]:
    """Commands the server has run so far, by name (INFO commandstats)."""
    stats = _client(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}


def gc_pauses(path: Path, start: float, end: float) -> list[tuple[int, float]]:
    """(generation, milliseconds) of the collections ``serve_probe.py`` logged in a window."""
    if not path.exists():
        return []
    pauses = []
    for line in path.read_text().splitlines():
        at, generation, ms = json.loads(line)
        if start <= at <= end:
            pauses.append((int(generation), float(ms)))
    return pauses
