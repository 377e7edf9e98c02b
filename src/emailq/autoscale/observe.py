"""What the autoscaler measures from the broker: per-lane depth, oldest age and mail due
soon, the ceremonies that queued wedding mail is for, the arrival rate, and how fast one
worker delivers.

Rates come from two snapshots' counters on the broker's clock: arrivals are the growth of
each lane's total (every state), deliveries the growth of its sent count. A delivery rate
is only a worker's capacity while mail was waiting all along; otherwise the workers were
idle part of the time and the figure says how much mail there was, not how fast they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from emailq.autoscale.policy import LaneLoad, Observation
from emailq.broker import Broker, State, Stats
from emailq.lanes import LANE_ORDER, Lane

SMOOTHING = 0.3  # weight of a new delivery-rate sample against the running figure


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stats: Stats
    workers: int

    def total(self, lane: Lane) -> int:
        return sum(self.stats.lanes[lane].counts.values())

    @property
    def sent(self) -> int:
        return self.stats.count(State.SENT)

    @property
    def ready(self) -> int:
        return self.stats.count(State.QUEUED)


class Observer:
    """Call :meth:`observe` once per decision; it remembers the previous snapshot."""

    def __init__(self, broker: Broker, lookahead_s: float, ceremony_horizon_s: float = 0.0) -> None:
        self.broker = broker
        self.lookahead_s = lookahead_s
        self.ceremony_horizon_s = ceremony_horizon_s
        self.rate_per_worker: float | None = None
        self._previous: _Snapshot | None = None

    def observe(self, workers: int) -> Observation:
        stats = self.broker.stats()
        due = self.broker.due_within(self.lookahead_s)
        ceremonies = tuple(self.broker.ceremonies(self.ceremony_horizon_s))
        now = _Snapshot(stats, workers)
        before, self._previous = self._previous, now
        elapsed = stats.taken_at - before.stats.taken_at if before else 0.0
        lanes = {}
        for lane in LANE_ORDER:
            lane_stats = stats.lanes[lane]
            arrived = now.total(lane) - before.total(lane) if before and elapsed > 0 else 0
            lanes[lane] = LaneLoad(
                depth=lane_stats.counts[State.QUEUED] + lane_stats.counts[State.LEASED],
                oldest_age=lane_stats.oldest_age,
                due_soon=due.get(lane, 0),
                arrival_rate=max(0, arrived) / elapsed if elapsed > 0 else 0.0,
            )
        if before and elapsed > 0 and before.ready and now.ready and before.workers:
            self._measure(max(0, now.sent - before.sent) / elapsed / before.workers)
        return Observation(lanes, workers, self.rate_per_worker, ceremonies=ceremonies)

    def _measure(self, sample: float) -> None:
        if sample <= 0:
            return  # mail waited yet none went out: a provider outage, not the workers' pace
        known = self.rate_per_worker
        self.rate_per_worker = sample if known is None else known + SMOOTHING * (sample - known)
