"""`emailq run --autoscale` with real worker processes, a real broker and the built-in sink."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from emailq.broker import Broker, NewMessage, State, open_broker
from emailq.message import parse_email
from emailq.sink import SmtpSink

pytestmark = pytest.mark.slow
CHANGE = re.compile(r"autoscaler: scaling (up|down) (\d+) → (\d+)")
# Decisions every half second with short cooldowns, so the test sees a day's worth in seconds;
# a low assumed rate and a short deadline make 2,000 standard emails a backlog worth 4 workers.
FAST = {
    "EMAILQ_AUTOSCALE_INTERVAL_S": "0.5",
    "EMAILQ_AUTOSCALE_UP_COOLDOWN_S": "0",
    "EMAILQ_AUTOSCALE_DOWN_AFTER_S": "1",
    "EMAILQ_AUTOSCALE_DOWN_COOLDOWN_S": "1",
    "EMAILQ_AUTOSCALE_WORKER_RATE": "20",
    "EMAILQ_AUTOSCALE_DEADLINE_STANDARD_S": "5",
    "EMAILQ_AUTOSCALE_PROTECTED": "",
}


@pytest.fixture
def queue(broker_url: str) -> Iterator[Broker]:
    with open_broker(broker_url) as broker:
        yield broker


class Pool:
    """The pool size as `emailq run` reports it in its log, read as it is written."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.size = 2
        self.history = [2]
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)
            if change := CHANGE.search(line):
                self.size = int(change[3])
                self.history.append(self.size)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_backlog_grows_the_pool_and_a_drained_queue_shrinks_it_to_the_minimum(
    broker_url: str, queue: Broker
) -> None:
    with SmtpSink() as sink:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")} | FAST
        command = [
            sys.executable, "-m", "emailq", "run", "--autoscale", "2:4",
            "--broker-url", broker_url, "--provider-url", f"smtp://127.0.0.1:{sink.port}?pool=4",
        ]  # fmt: skip
        with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as run:
            pool = Pool(run)
            try:
                started = lambda: any("autoscaler: deciding for" in x for x in pool.lines)  # noqa: E731
                wait_until(started, 30, "the autoscaler to start")
                emails = [
                    parse_email({
                        "from": "planner@weddings.example", "to": f"guest{i}@example.org",
                        "subject": f"Invitation {i}", "text": "You are invited.\n" * 20,
                    }).to_payload()
                    for i in range(2000)
                ]  # fmt: skip
                ids = queue.enqueue_many([NewMessage(p) for p in emails])
                wait_until(lambda: pool.size == 4, 30, "the pool to grow to 4")
                wait_until(lambda: sink.count >= len(ids), 120, "every email at the sink")
                wait_until(lambda: pool.size == 2, 60, "the pool to shrink back to 2")
            finally:
                run.send_signal(signal.SIGTERM)
                run.wait(60)
    assert run.returncode == 0, "".join(pool.lines[-20:])
    delivered = Counter(delivery.message_id for delivery in sink.deliveries)
    assert set(delivered) == set(ids) and set(delivered.values()) == {1}  # each exactly once
    assert queue.stats().count(State.SENT) == len(ids) and queue.stats().backlog == 0
    assert pool.history[:2] == [2, 4] and pool.history[-1] == 2
    steps_down = [b - a for a, b in zip(pool.history[1:], pool.history[2:], strict=False)]
    assert all(step == -1 for step in steps_down)  # one step at a time
