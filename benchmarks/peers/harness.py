"""What benchmarks/e2e.py runs every system with: the SMTP sink, worker processes, drain timing.

Standard library only. Every phase is bounded in time and every process started here is
stopped on the way out, errors included: a hung worker fails the run with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

POLL_S = 0.25
STALL_S = 60.0  # no delivery for this long while mail is queued: something hung
STOP_S = 30.0  # how long a worker may take to exit after SIGTERM


class BenchmarkFailed(Exception):
    """One system's run failed; the message says what and where to look."""


def enqueue_timeout(n: int) -> float:
    return 60 + n / 500  # at least 500 emails/s after the first minute


def drain_timeout(n: int) -> float:
    return 60 + n / 150  # at least 9,000 emails/min after the first minute


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Fail the phase with a clear message when it outlives ``seconds`` (SIGALRM)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise BenchmarkFailed(f"{what} did not finish within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the receiving end ----------------------------------------------------------------------


def smtp_sink_path() -> str:
    """Postfix's smtp-sink, installed from Debian's postfix package when missing."""
    found = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin:/usr/bin")
    if found:
        return found
    print("smtp-sink not found: installing Debian's postfix package", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "postfix"], env=env, check=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as error:
        sys.exit(
            f"smtp-sink is missing and installing postfix failed ({error}); install it by "
            "hand: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
        )
    found = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin")
    if not found:
        sys.exit("postfix is installed but /usr/sbin/smtp-sink is not there")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            sys.exit(f"smtp-sink exited with {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    sys.exit(f"smtp-sink did not listen on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's C sink on a free port (backlog 1024); stopped on the way out, errors included.

    Not emailq's aiosmtpd sink: that one tops out near 40,000/min (docs/architecture.md §4).
    """
    port = free_port()
    command = [smtp_sink_path(), "-u", "nobody", f"127.0.0.1:{port}", "1024"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        stop(proc, 5)


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- worker processes -----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """A process and all its descendants (Celery's prefork pool), from /proc."""
    found = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found += descendants(int(child))
    return found


def peak_rss_kb(pid: int) -> int:
    """The kernel's high-water mark of the process's resident set (VmHWM), 0 when gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class Usage:
    cpu_s: float = 0.0  # user + system (wait4), children reaped by the workers included
    largest_rss_mb: float = 0.0  # the biggest single process
    total_rss_mb: float = 0.0  # every process of every worker, each at its own peak
    processes: int = 0


@dataclass
class Workers:
    """Worker processes, each in its own process group so that nothing is left behind."""

    name: str
    logs: Path  # one file per worker: its stdout and stderr
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hwm_kb: dict[int, int] = field(default_factory=dict)

    def start(self, commands: Sequence[Sequence[str]], cwd: Path, env: dict[str, str]) -> None:
        for index, command in enumerate(commands):
            with (self.logs / f"{self.name}-{index}.log").open("wb") as log:
                self.procs.append(subprocess.Popen(
                    command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip

    def check(self) -> None:
        """Record memory peaks; fail when a worker has exited on its own."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise BenchmarkFailed(
                    f"{self.name}: a worker exited with {proc.returncode}\n" + self.log_tail()
                )
            for pid in descendants(proc.pid):
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), peak_rss_kb(pid))

    def stop(self) -> Usage:
        """SIGTERM every worker, reap each with ``wait4`` and add up what they used."""
        self.check()
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        # Memory from VmHWM, not wait4's ru_maxrss: Linux carries the RSS of the process
        # before its exec into ru_maxrss, which is this benchmark's own size after a fork.
        usage = Usage(
            largest_rss_mb=max(self.hwm_kb.values(), default=0) / 1024,
            total_rss_mb=sum(self.hwm_kb.values()) / 1024,
            processes=len(self.hwm_kb),
        )
        for proc in self.procs:
            rusage = reap(proc)  # CPU includes the children each worker reaped (Celery's pool)
            usage.cpu_s += rusage.ru_utime + rusage.ru_stime
        self.kill()
        return usage

    def kill(self) -> None:
        """SIGKILL whatever is left of each worker's process group (errors, stragglers)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                proc.wait(5)

    def states(self) -> str:
        """Each process's state and where the kernel has it waiting: what a hang is stuck on."""
        rows = []
        for proc in self.procs:
            for pid in descendants(proc.pid):
                with contextlib.suppress(OSError):
                    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
                    wchan = Path(f"/proc/{pid}/wchan").read_text() or "-"
                    rows.append(f"  pid {pid}: state {state}, waiting in {wchan}")
        return "processes:\n" + "\n".join(rows)

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for path in sorted(self.logs.glob(f"{self.name}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(tails)


def reap(proc: subprocess.Popen[bytes]) -> resource.struct_rusage:
    """Wait for a stopping process (SIGKILL after STOP_S) and return its resource usage."""
    until = time.monotonic() + STOP_S
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
            return rusage
        if time.monotonic() > until:
            print(f"  worker {proc.pid} still running {STOP_S:.0f} s after SIGTERM: killed")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            until = float("inf")
        time.sleep(0.02)


# -- timing a drain -------------------------------------------------------------------------


@dataclass
class Drain:
    total: int
    started: float  # workers spawned
    first_at: float = 0.0  # first poll that saw a delivery: start-up ended before
    ended: float = 0.0

    @property
    def per_minute(self) -> float:
        """Emails/min from the workers' start to the last delivery, start-up included.

        Why not from the first delivery seen: batches already in flight then would count as
        if sent after it, which overstates small runs (by ~20% at 2,000 emails).
        """
        return self.total / max(self.ended - self.started, 1e-9) * 60

    @property
    def startup_s(self) -> float:
        return self.first_at - self.started

    def next_poll(self, count: int, now: float) -> float:
        """POLL_S, but finer when the end is near, so that it is not overshot by up to 0.25 s."""
        if not count:
            return POLL_S
        rate = count / max(now - self.started, 1e-9)
        return min(POLL_S, max(0.01, (self.total - count) / rate / 2))


def drain(
    workers: Workers,
    done: Callable[[], int],
    total: int,
    on_poll: Callable[[int], None] = lambda done: None,
) -> Drain:
    """Poll until ``done()`` reaches ``total``; fail on a stall, a dead worker or timeout."""
    timing = Drain(total, started=time.monotonic())
    last, last_change = 0, timing.started
    with deadline(drain_timeout(total), f"{workers.name}: delivering {total:,} emails"):
        while (count := done()) < total:
            now = time.monotonic()
            if count and not timing.first_at:
                timing.first_at = now
            if count != last:
                last, last_change = count, now
            elif now - last_change > STALL_S:
                raise BenchmarkFailed(
                    f"{workers.name}: stuck at {count:,}/{total:,} emails "
                    f"for {STALL_S:.0f} s\n{workers.states()}\n{workers.log_tail()}"
                )
            workers.check()
            on_poll(count)
            time.sleep(timing.next_poll(count, now))
    timing.ended = time.monotonic()
    timing.first_at = timing.first_at or timing.ended
    return timing
