"""`emailq run`'s supervisor: a worker that keeps failing at start-up is restarted with a
growing delay, not in a tight loop; a worker that dies is replaced; the supervisor is a
lean process of its own (no email stack, no multiprocessing helper) whose workers stop
gracefully with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from emailq.broker import NewMessage, State, open_broker
from emailq.message import parse_email
from emailq.sink import SmtpSink, free_port
from emailq.supervisor import MAX_RESTART_DELAY, restart_delay

# A supervisor of one worker whose provider URL cannot be opened: every start fails.
SUPERVISE_A_FAILING_WORKER = """
import logging, sys
from emailq.settings import Settings
from emailq.supervisor import Launch, Supervisor
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
settings = Settings(broker={"url": sys.argv[1]})  # a file in a folder that is not there
Supervisor(Launch.of(settings), 1).run()
"""


def test_restart_delays_grow_to_a_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays[:5] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays) and max(delays) <= MAX_RESTART_DELAY
    assert restart_delay(100) == MAX_RESTART_DELAY


@pytest.mark.slow
def test_a_worker_that_cannot_start_is_restarted_with_backoff(tmp_path: Path) -> None:
    delays: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", SUPERVISE_A_FAILING_WORKER, f"sqlite:///{tmp_path}/missing/q.db"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as supervisor:  # fmt: skip
        assert supervisor.stdout is not None
        deadline = time.monotonic() + 60
        try:
            while len(delays) < 3 and time.monotonic() < deadline:
                line = supervisor.stdout.readline()
                if match := re.search(r"exited with 1 after .* s; restarting in (\d+) s", line):
                    delays.append(match[1])
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(30)
    assert delays == ["0", "1", "2"]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_emailq_run_is_a_lean_supervisor_that_replaces_a_dead_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    payloads = [
        parse_email({"from": "a@example.org", "to": f"g{i}@example.org", "subject": "Hi",
                     "text": "Hello"}).to_payload()
        for i in range(400)
    ]  # fmt: skip
    with open_broker(url) as broker, SmtpSink() as sink:
        broker.enqueue_many([NewMessage(p) for p in payloads[:200]])
        port = free_port()  # the workers' metrics: this port and the next
        command = [sys.executable, "-m", "emailq", "run", "-n", "2", "--broker-url", url,
                   "--provider-url", f"smtp://127.0.0.1:{sink.port}",
                   "--metrics-port", str(port)]  # fmt: skip
        with subprocess.Popen(command, stderr=subprocess.DEVNULL) as run:
            try:
                wait_until(lambda: sink.count >= 200, "delivery of the first 200")
                workers = children(run.pid)
                # The command's own process became the supervisor (exec): two workers,
                # started as the worker entry, and no multiprocessing resource tracker.
                assert len(workers) == 2
                assert all("-m emailq.worker_process" in cmdline(pid) for pid in workers)
                assert "-m emailq.supervisor" in cmdline(run.pid)
                assert "pydantic_core" not in Path(f"/proc/{run.pid}/maps").read_text()
                for each in (port, port + 1):  # each worker its own Prometheus port
                    # (a worker may have delivered none of the first 200 and be starting yet)
                    wait_until(lambda at=each: metrics_page(at) is not None, f"metrics on {each}")
                    assert b"emailq_" in (metrics_page(each) or b"")
                os.kill(workers[1], signal.SIGKILL)
                wait_until(lambda: len(set(children(run.pid)) - set(workers)) == 1, "restart")
                broker.enqueue_many([NewMessage(p) for p in payloads[200:]])
                wait_until(lambda: broker.stats().count(State.SENT) == 400, "all 400 sent")
            finally:
                run.send_signal(signal.SIGTERM)
                code = run.wait(60)
        assert code == 0
        assert broker.stats().count(State.SENT) == 400
    assert not Path(f"/proc/{workers[0]}").exists()  # stopped with it and reaped by it


def metrics_page(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            body: bytes = page.read()
            return body
    except OSError:  # not listening yet
        return None
