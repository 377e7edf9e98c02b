"""Several real processes on one queue, each backend: leases, crashes and idempotency."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailq.broker import Broker, NewMessage, State, open_broker
from emailq.lanes import Lane

PROC = Path(__file__).with_name("broker_proc.py")
pytestmark = pytest.mark.slow


def start(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(PROC), *map(str, args)])


def wait_for_file(path: Path, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path.name} was not written within {timeout}s")


def wait_for_ready(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout}s"
        time.sleep(0.01)


def finish(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        assert proc.wait(timeout=60) == 0


@pytest.fixture
def real_broker(broker_url: str) -> Iterator[Broker]:
    """A broker on real time, as the other processes use."""
    with open_broker(broker_url) as broker:
        yield broker


def test_concurrent_leasing_never_hands_out_a_message_twice(
    broker_url: str, real_broker: Broker, tmp_path: Path
) -> None:
    lanes = [Lane.CRITICAL, Lane.WEDDING_DAY, Lane.STANDARD, Lane.BULK]
    ids = real_broker.enqueue_many([NewMessage(b"m", lane=lanes[i % 4]) for i in range(2000)])
    outs = [tmp_path / f"out{i}.json" for i in range(4)]
    procs = [start("lease-all", broker_url, out, 25, 300) for out in outs]
    finish(procs)
    taken = [message_id for out in outs for message_id in json.loads(out.read_text())]
    duplicates = [i for i, n in Counter(taken).items() if n > 1]
    assert duplicates == []
    assert sorted(taken) == sorted(ids)
    assert real_broker.stats().count(State.LEASED) == 2000


def test_a_worker_killed_mid_batch_loses_nothing(
    broker_url: str, real_broker: Broker, tmp_path: Path
) -> None:
    ids = real_broker.enqueue_many([NewMessage(b"m") for _ in range(120)])
    out = tmp_path / "hung.json"
    proc = start("lease-and-hang", broker_url, out, 50, 1.0)
    held = wait_for_file(out)
    assert isinstance(held, list) and len(held) == 50
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Nothing else can take the killed worker's mail until its lease runs out...
    rest = real_broker.lease("survivor", 200, 60)
    assert {job.id for job in rest} == set(ids) - set(held)
    real_broker.complete(rest)
    # ...and then it comes back, once, with the attempt counted.
    deadline = time.monotonic() + 15
    while real_broker.reap_expired() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    back = real_broker.lease("survivor", 200, 60)
    assert sorted(job.id for job in back) == sorted(held)
    assert {job.attempts for job in back} == {2}
    real_broker.complete(back)
    assert real_broker.stats().count(State.SENT) == 120


def test_idempotent_enqueue_from_racing_processes_stores_one_copy(
    broker_url: str, real_broker: Broker, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    outs = [tmp_path / f"keys{i}.json" for i in range(4)]
    procs = [start("enqueue-keys", broker_url, out, 200, go) for out in outs]
    for out in outs:  # every interpreter is up before any starts: they race on the keys
        wait_for_ready(out.with_suffix(".ready"))
    go.touch()
    finish(procs)
    results = [json.loads(out.read_text()) for out in outs]
    assert all(result == results[0] for result in results)
    assert len(set(results[0].values())) == 200
    assert real_broker.stats().count(State.QUEUED) == 200
