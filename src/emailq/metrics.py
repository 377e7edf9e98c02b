"""Prometheus metrics: intake counters and latencies, plus the queue's depth read at scrape.

Each process exposes what it did itself (the API: accepted mail and request latency; a
worker: sent, failed and retried mail with delivery latency), which is how Prometheus
expects to aggregate several processes. Queue depth comes from the broker at scrape time,
so any process can report it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from emailq.broker import Action, Broker, Outcome

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class QueueCollector(Collector):
    """Depth per lane and state, and the oldest ready message's age, cached for a second."""

    def __init__(self, broker: Callable[[], Broker], max_age_s: float = 1.0) -> None:
        self.broker = broker
        self.max_age_s = max_age_s
        self._cached: tuple[float, list[GaugeMetricFamily]] = (0.0, [])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        taken, families = self._cached
        if time.monotonic() - taken > self.max_age_s:
            families = self._read()
            self._cached = (time.monotonic(), families)
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        stats = self.broker().stats()
        depth = GaugeMetricFamily(
            "emailq_queue_messages", "Messages per lane and state", labels=["lane", "state"]
        )
        oldest = GaugeMetricFamily(
            "emailq_queue_oldest_age_seconds", "Age of the oldest ready message", labels=["lane"]
        )
        for lane, lane_stats in stats.lanes.items():
            for state, count in lane_stats.counts.items():
                depth.add_metric([lane.value, state.value], count)
            oldest.add_metric([lane.value], lane_stats.oldest_age)
        return [depth, oldest]


class IntakeMetrics:
    def __init__(self, broker: Callable[[], Broker]) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "emailq_accepted", "Emails accepted into the queue", ["lane"], registry=self.registry
        )
        self.rejected = Counter(
            "emailq_rejected", "Requests refused, by HTTP status", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "emailq_api_request_seconds", "API request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(QueueCollector(broker))


class DeliveryMetrics:
    """A worker's own metrics: what it sent, retried and buried, and how long mail waited
    from enqueue to settlement, per lane."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["lane"]
        self.sent = Counter("emailq_sent", "Emails delivered", labels, registry=self.registry)
        self.failed = Counter(
            "emailq_failed", "Emails that failed for good", labels, registry=self.registry
        )
        self.retried = Counter(
            "emailq_retried", "Delivery attempts to be retried", labels, registry=self.registry
        )
        self.released = Counter(
            "emailq_released", "Emails given back unsent", labels, registry=self.registry
        )
        self.deferred = Counter(
            "emailq_deferred",
            "Emails put back untried: provider down or rate limited (no attempt spent)",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "emailq_delivery_seconds", "Enqueue to delivery", labels,
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def observe(self, outcomes: Sequence[Outcome], at: float) -> None:
        counters = {
            Action.COMPLETE: self.sent, Action.BURY: self.failed,
            Action.RETRY: self.retried, Action.RELEASE: self.released,
            Action.DEFER: self.deferred,
        }  # fmt: skip
        for outcome in outcomes:
            lane = outcome.job.lane.value
            counters[outcome.action].labels(lane).inc()
            if outcome.action is Action.COMPLETE:
                self.latency.labels(lane).observe(max(0.0, at - outcome.job.enqueued_at))
