"""``benchmarks/e2e.py --profile``: where one emailq worker's CPU time goes.

py-spy when it is installed: it samples the worker from outside, with little overhead, every
thread, idle time left out. Otherwise cProfile inside the worker, one profiler per thread
(broker calls run on threads) timing its own thread's CPU, so waiting does not count; it is
deterministic, but its overhead inflates pure-Python code (many small calls) against C code.
Both print the same two lists: by cumulative time (a function and its callees) and by own time.
"""

from __future__ import annotations

import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOP_CUMULATIVE = 25
TOP_OWN = 15

# Frames that enclose nearly every sample and say nothing about where the time goes.
SCAFFOLDING_FILES = {
    "<frozen runpy>", "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
    "click/core.py", "emailq/__main__.py", "emailq/cli.py", "emailq/supervisor.py",
    "emailq/worker_process.py",
    "asyncio/runners.py", "threading.py", "<string>", "cProfile.py",
}  # fmt: skip
SCAFFOLDING_FUNCTIONS = {
    "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever", "BaseEventLoop._run_once",
    "Handle._run", "<module>", "_worker", "run_until_complete", "run_forever", "_run_once",
    "_run", "<method 'run' of '_contextvars.Context' objects>",
}  # fmt: skip
_LIBRARY_PREFIX = re.compile(r".*/(?:site-packages|src|python3\.\d+)/")


@dataclass
class Profile:
    cumulative: Counter[str]  # frame label → time in it and its callees
    own: Counter[str]  # frame label → time in it alone
    total: float
    unit: str


def is_scaffolding(frame: str) -> bool:
    """True for a frame such as 'Handle._run (asyncio/events.py:78)' that encloses the rest."""
    function, _, where = frame.partition(" (")
    return function in SCAFFOLDING_FUNCTIONS or where.rpartition(":")[0] in SCAFFOLDING_FILES


def print_profile(title: str, profile: Profile) -> None:
    print(f"\n{title}: {profile.total:,.2f} {profile.unit} in all")
    print(
        f"top {TOP_CUMULATIVE} by cumulative share (a function and its callees; the frames of "
        "the CLI, imports and the event loop that enclose the rest are left out):"
    )
    cumulative = Counter({f: n for f, n in profile.cumulative.items() if not is_scaffolding(f)})
    for frame, amount in cumulative.most_common(TOP_CUMULATIVE):
        print(f"  {amount / max(profile.total, 1e-9):6.1%}  {frame}")
    print(f"top {TOP_OWN} by own share:")
    for frame, amount in profile.own.most_common(TOP_OWN):
        print(f"  {amount / max(profile.total, 1e-9):6.1%}  {frame}")


class CProfiled:
    """The worker's command runs it under cProfile; the profile is read after it exits."""

    # `python -c CODE OUT worker …`: the emailq CLI; every thread's profile merged into OUT.
    CODE = """
import cProfile, pstats, sys, threading, time
from emailq.cli import main

out, profiles = sys.argv[1], []

def profile_this_thread(*_):
    sys.setprofile(None)
    profiles.append(cProfile.Profile(time.thread_time))
    profiles[-1].enable()

threading.setprofile(profile_this_thread)
sys.argv = ["emailq", *sys.argv[2:]]
profile_this_thread()
try:
    main()
except SystemExit:
    pass
finally:
    pstats.Stats(*profiles).dump_stats(out)
"""

    def __init__(self, out: Path) -> None:
        self.out = out

    def command(self, worker_args: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", self.CODE, str(self.out), *worker_args]

    def attach(self, pid: int) -> None:
        """Nothing to do: the worker profiles itself."""

    def detach(self) -> None:
        """Nothing to do: the worker writes its profile when it exits."""

    def report(self, name: str) -> None:
        if not self.out.exists():
            print(f"\n{name}: the profiled worker wrote no profile")
            return
        cumulative: Counter[str] = Counter()
        own: Counter[str] = Counter()
        stats = pstats.Stats(str(self.out))
        for (file, line, function), row in stats.stats.items():  # type: ignore[attr-defined]
            label = f"{function} ({_LIBRARY_PREFIX.sub('', file)}:{line})"
            own[label] += row[2]
            cumulative[label] += row[3]
        total = stats.total_tt  # type: ignore[attr-defined]
        unit = "CPU s (cProfile, its overhead included)"
        print_profile(f"{name}: worker 0", Profile(cumulative, own, total, unit))


class PySpied:
    """py-spy attaches to the running worker and writes its samples when interrupted."""

    RATE = 200  # samples/s

    def __init__(self, py_spy: str, out: Path) -> None:
        self.py_spy, self.out = py_spy, out
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, worker_args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "emailq", *worker_args]

    def attach(self, pid: int) -> None:
        command = [
            self.py_spy, "record", "--pid", str(pid), "--format", "raw", "--function",
            "--nonblocking", "--rate", str(self.RATE), "--output", str(self.out),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def detach(self) -> None:
        """Call before the worker stops: py-spy writes its samples on SIGINT."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def report(self, name: str) -> None:
        if not self.out.exists():
            error = self.proc.stderr.read().decode() if self.proc and self.proc.stderr else ""
            print(f"\n{name}: py-spy wrote no samples. {error.strip()}")
            return
        profile = collapse(self.out.read_text().splitlines())
        print_profile(f"{name}: worker 0, sampled by py-spy at {self.RATE} Hz", profile)


def collapse(lines: Sequence[str]) -> Profile:
    """Samples per function from py-spy's collapsed stacks ('f (a.py:1);g (b.py:2) 7')."""
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame.strip() for frame in stack.split(";")]
        cumulative.update(dict.fromkeys(frames, int(count)))  # once per stack, even if recursive
        own[frames[-1]] += int(count)
        total += int(count)
    return Profile(cumulative, own, total, "samples of busy threads")


Profiler = CProfiled | PySpied


def profiler_for(name: str, tmp: Path) -> Profiler:
    """py-spy when it is installed (on PATH or in this venv), else cProfile."""
    venv_bin = str(Path(sys.executable).parent)
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=venv_bin)
    if py_spy:
        return PySpied(py_spy, tmp / f"{name}.py-spy.txt")
    return CProfiled(tmp / f"{name}.prof")
