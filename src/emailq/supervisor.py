"""Run several worker processes and keep them running (``emailq run``).

Each worker is a process of its own (the GIL makes threads no use for rendering), started
as ``python -m emailq.worker_process`` with the effective settings on its stdin. The
supervisor restarts a worker that dies, forwards SIGTERM/SIGINT to all of them, and waits
for them to finish their batches; a worker that outlives the grace period is killed, and
its leased mail comes back when the lease expires.

The supervisor holds no email stack: this module is standard library only, so that
`emailq run`, once it has read the settings, replaces itself (exec, same pid) with
``python -m emailq.supervisor`` (:func:`main`), a process the size of a bare interpreter.
No worker is a fork of a large parent and no multiprocessing helper process runs. With
``--autoscale`` the command's own process supervises, since the autoscaler reads the broker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from emailq.logs import configure_handler

if TYPE_CHECKING:
    from emailq.autoscale.controller import Autoscaler
    from emailq.settings import Settings

log = logging.getLogger("emailq.supervisor")  # not "__main__" under python -m

WORKER_ENTRY = "emailq.worker_process"


@dataclass(frozen=True)
class Launch:
    """What starting workers takes, in plain data: the settings handoff (JSON, secrets
    included: it goes to each worker's stdin, never on a command line), how long workers
    get to stop, whether the first worker also runs the monitor, and how to log."""

    settings: str
    shutdown_timeout_s: float
    monitor: bool = False
    log_format: str = "text"
    secrets: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, settings: Settings, monitor: bool = False) -> Launch:
        return cls(
            settings=settings.handoff(),
            shutdown_timeout_s=settings.worker.shutdown_timeout_s,
            monitor=monitor and settings.monitor.enabled,
            log_format=settings.log_format,
            secrets=settings.secrets(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Launch:
        return cls(**json.loads(text))

    def command(self, index: int) -> list[str]:
        """The command line of the worker at ``index`` (its settings go to its stdin)."""
        command = [sys.executable, "-m", WORKER_ENTRY, "--index", str(index)]
        return [*command, "--monitor"] if self.monitor and index == 0 else command

    def start(self, index: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self.command(index), stdin=subprocess.PIPE)
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: restarted as any exit
            process.stdin.write(self.settings.encode())
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        return process


STABLE_AFTER = 30.0  # seconds; a worker that ran this long before exiting did start fine
MAX_RESTART_DELAY = 60.0


def restart_delay(exits_in_a_row: int) -> float:
    """Seconds before restarting a worker after its n-th exit in a row, each soon after it
    started: at once the first time, then 1, 2, 4... s up to a minute. A worker that
    cannot start (a wrong URL, Redis down) then costs little instead of a spawn per poll."""
    if exits_in_a_row <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY, 2.0 ** (exits_in_a_row - 2))


@dataclass
class _Slot:
    """One worker position: its process (None while waiting to restart) and its history."""

    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    exits_in_a_row: int = 0
    restart_at: float = 0.0


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


class Supervisor:
    def __init__(
        self, launch: Launch, processes: int, autoscaler: Autoscaler | None = None
    ) -> None:
        self.launch = launch
        self.processes = processes
        self._slots = [_Slot() for _ in range(processes)]
        self._stopping = False
        # The pool follows the autoscaler's decisions; workers it stops finish (SIGTERM:
        # finish or release what they hold) in ``_draining`` while the rest go on.
        self.autoscaler = autoscaler
        self._draining: list[subprocess.Popen[bytes]] = []
        self._next_decision = 0.0

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self._stopping:
            now = time.monotonic()
            for index, slot in enumerate(self._slots):
                if slot.process is not None and not _alive(slot.process):
                    self._schedule_restart(slot, now)
                if slot.process is None and now >= slot.restart_at:
                    slot.process, slot.started = self.launch.start(index), now
            self._draining = [p for p in self._draining if _alive(p)]
            if self.autoscaler is not None and now >= self._next_decision:
                self._next_decision = now + self.autoscaler.interval_s
                self._autoscale()
            time.sleep(0.2)
        return self._shutdown()

    def _autoscale(self) -> None:
        assert self.autoscaler is not None
        try:
            decision = self.autoscaler.step(len(self._slots))
        except Exception:  # the broker away for a while: keep the pool, try next time
            log.exception("autoscaler: no decision this time")
            return
        if decision is not None:
            self.resize(decision.workers)

    def resize(self, processes: int) -> None:
        """Grow the pool (new workers start on the next tick) or shrink it from the end
        (a graceful SIGTERM: nothing is lost, the worker finishes or releases its mail)."""
        while len(self._slots) < processes:
            self._slots.append(_Slot())
        while len(self._slots) > processes:
            process = self._slots.pop().process
            if process is not None and _alive(process):
                signal_process(process.pid, signal.SIGTERM)
                self._draining.append(process)
        self.processes = processes

    def _schedule_restart(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        lived = now - slot.started
        slot.exits_in_a_row = 1 if lived >= STABLE_AFTER else slot.exits_in_a_row + 1
        delay = restart_delay(slot.exits_in_a_row)
        log.warning(
            "worker %s exited with %s after %.1f s; restarting in %.0f s",
            slot.process.pid, slot.process.returncode, lived, delay,
        )  # fmt: skip
        slot.process, slot.restart_at = None, now + delay

    def _shutdown(self) -> int:
        if self.autoscaler is not None:
            with contextlib.suppress(Exception):  # a lease left behind lapses by itself
                self.autoscaler.close()
        running = [slot.process for slot in self._slots if slot.process is not None]
        running += self._draining
        for process in running:
            if _alive(process):
                signal_process(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.launch.shutdown_timeout_s + 5
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# How `emailq run` hands its launch over across exec: a pipe it fills before exec. Larger
# than this (a pipe's buffer on some systems), the command supervises in its own process.
HANDOFF_LIMIT = 16_000


def exec_supervisor(launch: Launch, processes: int) -> None:
    """Replace this process (its pid stays: signals, systemd) with a lean supervisor.
    Returns only when the launch is too large to hand over through a pipe."""
    data = launch.to_json().encode()
    if len(data) > HANDOFF_LIMIT:
        return
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    os.set_inheritable(read, True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "emailq.supervisor", "--processes", str(processes)]
    os.execv(sys.executable, [*argv, "--launch-fd", str(read)])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m emailq.supervisor --processes N --launch-fd FD``: what `emailq run`
    becomes; the :class:`Launch` as JSON is read from file descriptor FD."""
    parser = argparse.ArgumentParser(prog="python -m emailq.supervisor")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--launch-fd", type=int, required=True)
    args = parser.parse_args(argv)
    with os.fdopen(args.launch_fd, "rb") as handoff:
        launch = Launch.from_json(handoff.read().decode())
    configure_handler(launch.log_format, launch.secrets)
    sys.exit(Supervisor(launch, args.processes).run())


if __name__ == "__main__":
    main()
