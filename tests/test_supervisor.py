"""`emailq run`'s supervisor: a worker that keeps failing at start-up is restarted with a
growing delay, not in a tight loop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
