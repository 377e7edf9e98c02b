"""benchmarks/e2e.py's critical test: 200 ceremony changes queued at once mid-drain, each
timed from the moment it was queued to its arrival at the sink (benchmarks/sinkclock.py).

emailq queues them through its broker on the critical lane; a peer through its own client
on its dedicated critical queue (benchmarks/peers/*_app.py ``critical``), in a process of
its own that reports when it started queueing (imports and connecting happen before).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emailq.broker import Broker, NewMessage
from emailq.lanes import Lane
from emailq.message import parse_email
from peers.harness import BenchmarkFailed
from peers.workload import ceremony_change
from sinkclock import SinkClock

CRITICAL_N = 200
CRITICAL_AT = 0.2  # share of the bulk sent when the critical emails are queued
ENQUEUE_BATCH = 1_000


def enqueue_emails(broker: Broker, work: Sequence[dict[str, str]], lane: Lane) -> list[str]:
    """The intake path an application takes: validate, serialise, enqueue in batches."""
    ids: list[str] = []
    for start in range(0, len(work), ENQUEUE_BATCH):
        messages = [
            NewMessage(parse_email(fields).to_payload(), lane=lane)
            for fields in work[start : start + ENQUEUE_BATCH]
        ]
        ids += broker.enqueue_many(messages)
    return ids


@dataclass
class Critical:
    """What one run's critical test measured."""

    latencies_ms: list[float] = field(default_factory=list)  # arrival − queued, one per email
    missing: int = CRITICAL_N  # queued (or meant to be) and never seen at the sink
    after: float = 0.0  # share of the bulk sent when they were queued


class Probe:
    """Queues the critical emails once ~20 % of the bulk is sent (call it on every poll)."""

    def __init__(self, bulk: int) -> None:
        self.threshold = max(1, int(bulk * CRITICAL_AT))
        self.bulk = bulk
        self.sent_then = 0  # bulk emails sent when the critical ones were queued
        self.keys: list[str] = []  # Message-ID left parts, as the sink reports them
        self.queued_at = 0.0  # time.time() when queueing started

    def __call__(self, sent: int) -> None:
        if not self.sent_then and sent >= self.threshold:
            self.sent_then = sent
            self.queue()

    def queue(self) -> None:
        raise NotImplementedError

    def result(self, sink: SinkClock) -> Critical:
        self.collect()
        arrived = sink.arrivals(self.keys)
        latencies = [(arrived[key] - self.queued_at) * 1000 for key in self.keys if key in arrived]
        return Critical(latencies, CRITICAL_N - len(latencies), self.sent_then / self.bulk)

    def collect(self) -> None:
        """Wait for whatever queued the emails, when that ran apart."""


class EmailqProbe(Probe):
    def __init__(self, broker: Broker, bulk: int) -> None:
        super().__init__(bulk)
        self.broker = broker
        self.work = [ceremony_change(i) for i in range(CRITICAL_N)]

    def queue(self) -> None:
        self.queued_at = time.time()  # the worker's Message-ID is the broker's id
        self.keys = enqueue_emails(self.broker, self.work, Lane.CRITICAL)


class PeerProbe(Probe):
    """Runs ``python -m peers.PEER_app critical N TAG`` without waiting for it."""

    def __init__(self, peer: str, python: str, cwd: Path, env: dict[str, str], bulk: int):
        super().__init__(bulk)
        self.tag = f"critical-{uuid.uuid4().hex[:8]}"
        self.command = [python, "-m", f"peers.{peer}_app", "critical", str(CRITICAL_N), self.tag]
        self.cwd, self.env = cwd, env
        self.proc: subprocess.Popen[str] | None = None

    def queue(self) -> None:
        self.keys = [f"{self.tag}-{i}" for i in range(CRITICAL_N)]
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def collect(self) -> None:
        if self.proc is None:
            raise BenchmarkFailed("the critical emails were never queued")
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode:
            raise BenchmarkFailed(f"queueing the critical emails failed\n{err[-2000:]}")
        self.queued_at = float(json.loads(out.splitlines()[-1])["queued_at"])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: with 200 values, p99 is the second largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p99(critical: Critical) -> float:
    """p99 over all 200: an email that never arrived counts as infinitely late."""
    padded = critical.latencies_ms + [float("inf")] * critical.missing
    return percentile(padded, 0.99) if padded else float("inf")
