"""The fault suite: real `emailq worker` processes, real signals, a recording SMTP sink.

Mail is never lost and never sent by a process that no longer owns it; a killed worker
re-sends at most what was on the wire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from emailq.broker import Broker, State, open_broker
from emailq.sink import SmtpSink
from faults import (
    LaggingRelay,
    SlowSink,
    StallingRelay,
    copies,
    fill,
    pause_between_writes,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
EMAILQ = [sys.executable, "-m", "emailq"]
POOL = 4


@pytest.fixture
def queue(broker_url: str) -> Iterator[Broker]:
    with open_broker(broker_url) as broker:
        yield broker


def start_worker(broker_url: str, port: int, *flags: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    return subprocess.Popen(
        [*EMAILQ, "worker", "--broker-url", broker_url,
         "--provider-url", f"smtp://127.0.0.1:{port}?pool={POOL}&timeout=60", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_a_worker_stopped_past_its_lease_sends_nothing_when_it_wakes(
    broker_url: str, queue: Broker
) -> None:
    ids = fill(queue, 120)
    with SmtpSink() as sink:
        relay = StallingRelay(sink.port)  # the first worker's server hangs before its greeting
        first = start_worker(broker_url, relay.port, "--lease", "3", "--batch", "120",
                             "--concurrency", "1")  # fmt: skip
        second: subprocess.Popen[bytes] | None = None
        try:
            wait_until(lambda: queue.stats().count(State.LEASED) == 120, 30, "the first lease")
            pause_between_writes(first.pid, broker_url)  # holding 120 messages, none sent
            time.sleep(4)  # past its 3 s lease
            second = start_worker(broker_url, sink.port, "--lease", "3")
            assert sink.wait_for(120, 60), "the second worker did not deliver the mail"
            relay.release()  # the first worker's server answers again...
            first.send_signal(signal.SIGCONT)  # ...and the first worker wakes up
            time.sleep(4)
        finally:
            first.send_signal(signal.SIGCONT)
            stop(first)
            if second is not None:
                stop(second)
            relay.close()
        arrived = copies(sink)
    assert set(arrived) == set(ids)
    assert [i for i, n in arrived.items() if n > 1] == []


def test_killing_a_worker_every_two_seconds_loses_nothing_and_duplicates_little(
    broker_url: str, queue: Broker
) -> None:
    ids = fill(queue, 20_000)
    kills = 0
    # 4 ms a message over 4 connections: at most 1,000 a second, so the run lasts long
    # enough for its kills however fast the worker is.
    with SmtpSink(handler=LaggingRelay(0.004)) as sink:
        worker = start_worker(broker_url, sink.port, "--lease", "2")
        try:
            deadline = time.monotonic() + 300
            while queue.stats().backlog and time.monotonic() < deadline:
                time.sleep(2)
                if queue.stats().backlog:
                    worker.send_signal(signal.SIGKILL)
                    worker.wait()
                    kills += 1
                    worker = start_worker(broker_url, sink.port, "--lease", "2")
            assert queue.stats().backlog == 0, "the queue did not drain"
        finally:
            stop(worker)
        arrived = copies(sink)
    assert kills >= 5, "the run was too short to show anything"
    assert set(arrived) == set(ids), "mail was lost"
    duplicates = sum(n - 1 for n in arrived.values())
    print(f"{len(ids)} emails, {kills} SIGKILLs, {duplicates} duplicates (bound {kills * POOL})")
    assert duplicates <= kills * POOL, (duplicates, kills)
    assert queue.stats().count(State.SENT) == len(ids)


def test_sigterm_past_the_deadline_lets_the_wire_finish_and_a_restart_sends_no_copy(
    broker_url: str, queue: Broker
) -> None:
    ids = fill(queue, 40)
    slow = SlowSink(delay=1.0)  # one message a second, whole server
    with SmtpSink(handler=slow) as sink:
        worker = start_worker(broker_url, sink.port, "--shutdown-timeout", "3")
        wait_until(lambda: sink.count >= 2, 30, "the first deliveries")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        slow.delay = 0.0
        left = queue.stats()
        assert left.count(State.LEASED) == 0, "the stopping worker left mail leased"
        restarted = start_worker(broker_url, sink.port)
        try:
            assert sink.wait_for(len(ids), 60), "the restarted worker did not finish"
            wait_until(lambda: queue.stats().backlog == 0, 30, "every message settled")
        finally:
            stop(restarted)
        arrived = copies(sink)
    assert set(arrived) == set(ids)
    assert [i for i, n in arrived.items() if n > 1] == []
