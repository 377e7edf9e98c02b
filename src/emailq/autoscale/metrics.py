"""The autoscaler's Prometheus metrics, and the desired pool per queue for ``/metrics``.

``emailq_autoscale_desired_workers{queue}`` is what the load asks for now (the policy's
:func:`~emailq.autoscale.policy.demand`: bounds, pattern, emergency, no cooldowns). The API
exports it for orchestrators (KEDA's Prometheus scaler, ``deploy/kubernetes/``), whose own
scale-down stabilisation plays the part of the cooldowns; ``emailq run --autoscale``
exports it with its decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from emailq.autoscale.observe import Observer
from emailq.autoscale.policy import AutoscaleConfig, Decision, demand
from emailq.broker import Broker

DESIRED = "emailq_autoscale_desired_workers"
DESIRED_HELP = "Worker processes the queue's load asks for now (min..max, no cooldowns)"


def queue_name(broker: Broker) -> str:
    """The queue's name in metric labels: its Redis prefix, or its SQLite file."""
    prefix = getattr(broker, "prefix", None)
    return str(prefix if prefix is not None else getattr(broker, "path", "emailq"))


class AutoscaleMetrics:
    """What a running autoscaler decided: counted per direction, the pool and the demand."""

    def __init__(self, queue: str, registry: CollectorRegistry | None = None) -> None:
        self.queue = queue
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "emailq_autoscale_decisions", "Autoscaler decisions, by direction (up, down, hold)",
            ["queue", "direction"], registry=self.registry,
        )  # fmt: skip
        self.workers = Gauge(
            "emailq_autoscale_workers", "Worker processes the autoscaler keeps", ["queue"],
            registry=self.registry,
        )  # fmt: skip
        self.desired = Gauge(DESIRED, DESIRED_HELP, ["queue"], registry=self.registry)

    def record(self, decision: Decision) -> None:
        self.decisions.labels(self.queue, decision.direction).inc()
        self.workers.labels(self.queue).set(decision.workers)
        self.desired.labels(self.queue).set(decision.demand.workers)


class DesiredWorkersCollector(Collector):
    """The desired pool, computed at scrape (at most once a second) by any process that can
    read the broker, such as the API. It knows no pool, so a worker's rate is the setting's."""

    def __init__(
        self, broker: Callable[[], Broker], config: AutoscaleConfig, max_age_s: float = 1.0
    ) -> None:
        self.broker = broker
        self.config = config
        self.max_age_s = max_age_s
        self._observer: Observer | None = None
        self._cached: tuple[float, list[GaugeMetricFamily]] = (-float("inf"), [])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        taken, families = self._cached
        if time.monotonic() - taken > self.max_age_s:
            families = [self._read()]
            self._cached = (time.monotonic(), families)
        yield from families

    def _read(self) -> GaugeMetricFamily:
        broker = self.broker()
        if self._observer is None or self._observer.broker is not broker:
            self._observer = Observer(
                broker, self.config.lookahead_s, self.config.ceremony_horizon_s
            )
        observation = self._observer.observe(workers=0)
        wanted = demand(observation, self.config, broker.now())
        family = GaugeMetricFamily(DESIRED, DESIRED_HELP, labels=["queue"])
        family.add_metric([queue_name(broker)], wanted.workers)
        return family
