"""Real `emailq worker` processes against a real SMTP server: signals, crashes, shared limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from emailq.broker import Broker, NewMessage, State, open_broker
from emailq.message import parse_email
from emailq.sink import SmtpSink, free_port

pytestmark = pytest.mark.slow
EMAILQ = [sys.executable, "-m", "emailq"]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def queue(broker_url: str) -> Iterator[Broker]:
    with open_broker(broker_url) as broker:
        yield broker


def fill(broker: Broker, n: int, domains: int = 3) -> list[str]:
    payloads = [
        parse_email({
            "from": "planner@weddings.example", "to": f"guest{i}@d{i % domains}.example",
            "subject": f"Invitation {i}", "text": "You are invited.\n" * 40,
        }).to_payload()
        for i in range(n)
    ]  # fmt: skip
    return broker.enqueue_many([NewMessage(p) for p in payloads])


def start_worker(broker_url: str, sink: SmtpSink, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EMAILQ, "worker", "--broker-url", broker_url,
         "--provider-url", f"smtp://127.0.0.1:{sink.port}?pool=4", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def delivered_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(d.message_id for d in sink.deliveries)


def test_sigterm_finishes_the_batch_in_hand_and_leaves_nothing_leased(
    broker_url: str, queue: Broker, sink: SmtpSink
) -> None:
    ids = fill(queue, 1500)
    worker = start_worker(broker_url, sink, "--batch", "50")
    wait_until(lambda: sink.count >= 200, 60, "the first deliveries")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    stats = queue.stats()
    assert stats.count(State.LEASED) == 0
    assert stats.count(State.SENT) == sink.count  # everything sent was recorded as sent
    assert stats.count(State.QUEUED) == len(ids) - sink.count
    # A new worker delivers the rest; nothing was sent twice.
    worker = start_worker(broker_url, sink)
    wait_until(lambda: queue.stats().count(State.SENT) == len(ids), 60, "the rest")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert delivered_ids(sink) == Counter(ids)


def test_sigkill_mid_run_loses_nothing_and_duplicates_at_most_the_batches_in_flight(
    broker_url: str, queue: Broker, sink: SmtpSink
) -> None:
    ids = fill(queue, 1500)
    flags = ("--batch", "50", "--concurrency", "2", "--lease", "2")
    worker = start_worker(broker_url, sink, *flags)
    wait_until(lambda: sink.count >= 300, 60, "the first deliveries")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    survivor = start_worker(broker_url, sink, *flags)
    wait_until(lambda: queue.stats().count(State.SENT) == len(ids), 90, "every message sent")
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0
    counts = delivered_ids(sink)
    assert set(counts) == set(ids)
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 2 * 50  # at most the batches the killed worker had in flight


def test_three_processes_share_one_provider_limit(
    broker_url: str, queue: Broker, sink: SmtpSink
) -> None:
    rate, burst = 60.0, 10
    ids = fill(queue, 420)
    workers = [
        start_worker(broker_url, sink, "--batch", "20", "--provider-rate", str(rate))
        for _ in range(3)
    ]
    try:
        wait_until(lambda: sink.count == len(ids), 60, "every message delivered")
    finally:  # a failed wait must not leave three workers running on
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0
    arrivals = sorted(d.received_at for d in sink.deliveries)
    # After the first burst, the limit paces the rest: (n - burst) messages over the span.
    observed = (len(arrivals) - burst) / (arrivals[-1] - arrivals[0])
    assert observed == pytest.approx(rate, rel=0.10)
    assert os.environ.get("EMAILQ_PROVIDER_URL") is None  # the flags, not the environment


def test_a_worker_exposes_its_delivery_metrics(
    broker_url: str, queue: Broker, sink: SmtpSink
) -> None:
    ids = fill(queue, 30)
    port = free_port()
    worker = start_worker(broker_url, sink, "--metrics-port", str(port))
    wait_until(lambda: queue.stats().count(State.SENT) == len(ids), 60, "every message sent")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert 'emailq_sent_total{lane="standard"} 30.0' in text
    assert 'emailq_delivery_seconds_count{lane="standard"} 30.0' in text
