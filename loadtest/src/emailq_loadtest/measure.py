"""What was sent and what arrived: every id accounted for, latency per lane from the schedule.

The feeder registers each message (id, lane, scheduled time) once emailq has accepted it;
the sink reports (id, received time) for every message it accepted. Latency is receipt
minus *scheduled* time. A second receipt of an id is a duplicate; an id the sink saw that
was never registered is unexpected; an id registered but never received is lost (the run
then asks the broker why: still queued, dead, or gone). Times are stored as seconds from
the run's start in flat arrays, so an hours-long endurance run stays small.
"""

from __future__ import annotations

import bisect
import os
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emailq.lanes import LANE_ORDER, Lane
from emailq.percentiles import percentile


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySummary:
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
            max=ordered[-1] if ordered else 0.0,
        )


@dataclass
class LaneRecord:
    """One lane's deliveries, column-wise: scheduled, received (s from start), latency (s)."""

    sent: int = 0
    rejected: int = 0
    scheduled: array[float] = field(default_factory=lambda: array("d"))
    received: array[float] = field(default_factory=lambda: array("d"))
    latency: array[float] = field(default_factory=lambda: array("d"))


@dataclass(frozen=True, slots=True)
class LiveView:
    """A snapshot for the terminal: rates over the last ``window`` seconds."""

    elapsed: float
    sent: int
    delivered: int
    backlog: int
    offered_per_min: float
    delivered_per_min: float
    p99_by_lane: dict[Lane, float]
    sent_by_lane: dict[Lane, int]
    delivered_by_lane: dict[Lane, int]
    duplicates: int


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """The messages scheduled in one window of the run (a stress step, or the whole run)."""

    start: float
    end: float
    sent: int
    delivered_in_time: int  # received by the window's end plus the grace period
    lanes: dict[Lane, LatencySummary]
    sent_by_lane: dict[Lane, int]

    @property
    def held_ratio(self) -> float:
        return self.delivered_in_time / self.sent if self.sent else 1.0


class Ledger:
    """Thread-safe: the feeder registers, the sink collector delivers, the view reads."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._lock = threading.Lock()
        self.lanes = {lane: LaneRecord() for lane in LANE_ORDER}
        self.sent_at = array("d")  # scheduled offset of every message offered
        self.sent_lane = array("B")  # and its lane (index in LANE_ORDER)
        self.lag = array("d")  # enqueue time - scheduled time, seconds
        self.intake_calls = array("d")  # seconds each enqueue_many call (or request) took
        self._pending: dict[str, tuple[float, Lane]] = {}
        self._delivered: set[str] = set()
        self._early: dict[str, float] = {}  # received before its id was registered
        self._ignored: set[str] = set()
        self.warmup_seen = 0
        self.duplicates = 0
        self.duplicate_ids: list[str] = []

    # -- writes -------------------------------------------------------------------------------
    def ignore(self, ids: Iterable[str]) -> None:
        """Ids that are not part of the measurement (the warm-up)."""
        with self._lock:
            for message_id in ids:
                self._ignored.add(message_id)
                if self._early.pop(message_id, None) is not None:  # it beat its registration
                    self.warmup_seen += 1

    def register(
        self, ids: Sequence[str], lanes: Sequence[Lane], scheduled: Sequence[float], at: float
    ) -> None:
        with self._lock:
            for message_id, lane, due in zip(ids, lanes, scheduled, strict=True):
                offset = due - self.start
                self.sent_at.append(offset)
                self.sent_lane.append(LANE_ORDER.index(lane))
                self.lag.append(at - due)
                self.lanes[lane].sent += 1
                if message_id in self._pending or message_id in self._delivered:
                    continue  # the broker returned a known id (idempotency): one message
                self._pending[message_id] = (offset, lane)
                if message_id in self._early:
                    self._arrive(message_id, self._early.pop(message_id))

    def intake_call(self, seconds: float) -> None:
        with self._lock:
            self.intake_calls.append(seconds)

    def reject(self, lane: Lane, count: int, scheduled: float) -> None:
        """Messages the service refused (HTTP errors): offered, never accepted."""
        with self._lock:
            self.lanes[lane].rejected += count
            self.lanes[lane].sent += count
            self.sent_at.extend([scheduled - self.start] * count)
            self.sent_lane.extend([LANE_ORDER.index(lane)] * count)

    def deliver(self, receipts: Iterable[tuple[str, float]]) -> None:
        with self._lock:
            for message_id, received_at in receipts:
                if message_id in self._ignored:
                    self.warmup_seen += 1
                    continue
                if message_id in self._delivered:
                    self.duplicates += 1
                    if len(self.duplicate_ids) < 20:
                        self.duplicate_ids.append(message_id)
                elif message_id in self._pending:
                    self._arrive(message_id, received_at)
                elif message_id in self._early:
                    self.duplicates += 1
                else:
                    self._early[message_id] = received_at

    def _arrive(self, message_id: str, received_at: float) -> None:
        scheduled, lane = self._pending.pop(message_id)
        self._delivered.add(message_id)
        record = self.lanes[lane]
        received = received_at - self.start
        record.scheduled.append(scheduled)
        record.received.append(received)
        record.latency.append(received - scheduled)

    # -- reads --------------------------------------------------------------------------------
    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.lanes.values())

    @property
    def rejected(self) -> int:
        return sum(r.rejected for r in self.lanes.values())

    @property
    def delivered(self) -> int:
        return len(self._delivered)

    def pending(self) -> dict[str, tuple[float, Lane]]:
        with self._lock:
            return dict(self._pending)

    def unexpected(self) -> int:
        """Ids the sink received that the run never sent."""
        with self._lock:
            return len(self._early)

    def live(self, at: float, window: float = 5.0) -> LiveView:
        elapsed = at - self.start
        since = max(0.0, elapsed - window)
        span = max(1e-9, min(window, elapsed))
        with self._lock:
            offered = len(self.sent_at) - bisect.bisect_left(self.sent_at, since)
            recent = {
                lane: sorted(r.latency[bisect.bisect_left(r.received, since) :])
                for lane, r in self.lanes.items()
            }
            return LiveView(
                elapsed=elapsed,
                sent=self.sent,
                delivered=self.delivered,
                backlog=self.sent - self.rejected - self.delivered,
                offered_per_min=offered / span * 60,
                delivered_per_min=sum(len(v) for v in recent.values()) / span * 60,
                p99_by_lane={lane: percentile(v, 99) for lane, v in recent.items()},
                sent_by_lane={lane: r.sent for lane, r in self.lanes.items()},
                delivered_by_lane={lane: len(r.latency) for lane, r in self.lanes.items()},
                duplicates=self.duplicates,
            )

    def window(self, start: float, end: float, grace: float) -> WindowFigures:
        """Figures for the messages scheduled in [start, end), judged at ``end + grace``."""
        with self._lock:
            counts = Counter(
                LANE_ORDER[index]
                for t, index in zip(self.sent_at, self.sent_lane, strict=True)
                if start <= t < end
            )
            lanes, in_time = {}, 0
            for lane, record in self.lanes.items():
                chosen = [
                    (received, latency)
                    for scheduled, received, latency in zip(
                        record.scheduled, record.received, record.latency, strict=True
                    )
                    if start <= scheduled < end
                ]
                in_time += sum(1 for received, _ in chosen if received <= end + grace)
                lanes[lane] = LatencySummary.of(latency for _, latency in chosen)
        sent_by_lane = {lane: counts.get(lane, 0) for lane in LANE_ORDER}
        return WindowFigures(start, end, sum(counts.values()), in_time, lanes, sent_by_lane)

    def summaries(self) -> dict[Lane, LatencySummary]:
        with self._lock:
            return {lane: LatencySummary.of(r.latency) for lane, r in self.lanes.items()}


# -- series for the plots -------------------------------------------------------------------


def per_second(offsets: Iterable[float], seconds: int) -> list[int]:
    counts = Counter(int(t) for t in offsets if t >= 0)
    return [counts.get(second, 0) for second in range(seconds)]


def throughput_series(ledger: Ledger, seconds: int) -> dict[str, list[int]]:
    """Messages offered (by scheduled second) and delivered (by receipt second)."""
    received = [t for r in ledger.lanes.values() for t in r.received]
    return {
        "offered": per_second(ledger.sent_at, seconds),
        "delivered": per_second(received, seconds),
    }


def bucket_size(duration: float, points: int = 120) -> float:
    """A round bucket length giving at most about ``points`` buckets over the run."""
    for size in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration / size <= points:
            return float(size)
    return 3600.0


def latency_series(record: LaneRecord, bucket: float) -> list[tuple[float, float, float]]:
    """(bucket start, p50, p99) by scheduled time, for the buckets that have deliveries."""
    buckets: dict[int, list[float]] = {}
    for scheduled, latency in zip(record.scheduled, record.latency, strict=True):
        buckets.setdefault(int(scheduled // bucket), []).append(latency)
    series = []
    for index in sorted(buckets):
        values = sorted(buckets[index])
        series.append((index * bucket, percentile(values, 50), percentile(values, 99)))
    return series


def distribution(record: LaneRecord, points: int = 200) -> list[tuple[float, float]]:
    """(latency, share of the lane's deliveries at or below it): the CDF, thinned."""
    values = sorted(record.latency)
    if not values:
        return []
    n = len(values)
    indices = sorted({min(n - 1, round(i * (n - 1) / (points - 1))) for i in range(points)})
    return [(values[i], (i + 1) / n) for i in indices]


def drift(record: LaneRecord, duration: float, share: float = 0.1) -> tuple[float, float]:
    """p99 of the messages scheduled in the first and in the last ``share`` of the run."""
    head = sorted(
        latency for t, latency in zip(record.scheduled, record.latency, strict=True)
        if t < duration * share
    )  # fmt: skip
    tail = sorted(
        latency for t, latency in zip(record.scheduled, record.latency, strict=True)
        if t >= duration * (1 - share)
    )  # fmt: skip
    return percentile(head, 99), percentile(tail, 99)


# -- processes ------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident set now (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@dataclass
class ResourceLog:
    """RSS samples and CPU time of the processes, by name ("worker-0", "sink-0", …)."""

    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # first, last sample

    def sample(self, offset: float, pids: dict[str, int]) -> None:
        self.samples.append((offset, {name: round(rss_mb(pid), 1) for name, pid in pids.items()}))
        for name, pid in pids.items():
            used = cpu_s(pid)
            if used:
                self.cpu[name] = (self.cpu.get(name, (used, used))[0], used)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per process: RSS at the first and last sample, the largest, and the CPU seconds
        used between the first and the last sample."""
        out: dict[str, dict[str, float]] = {}
        for _, sample in self.samples:
            for name, mb in sample.items():
                if mb <= 0:
                    continue
                entry = out.setdefault(name, {"start_mb": mb, "end_mb": mb, "max_mb": mb})
                entry["end_mb"] = mb
                entry["max_mb"] = max(entry["max_mb"], mb)
        for name, (first, last) in self.cpu.items():
            if name in out:
                out[name]["cpu_s"] = last - first
        return {name: {k: round(v, 2) for k, v in e.items()} for name, e in out.items()}
