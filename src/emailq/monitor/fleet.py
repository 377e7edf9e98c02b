"""Fleet-wide totals for Prometheus, kept by the monitor and exported by any API process.

Each worker's own ``/metrics`` is per process; these are the monitor's merged view, as
cumulative counters and a latency histogram (``_bucket``/``_sum``/``_count``) per lane,
so Prometheus and Grafana read the same numbers as the dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from emailq.metrics import LATENCY_BUCKETS
from emailq.monitor.snapshot import Snapshot
from emailq.monitor.store import MonitorStore

KEY = "fleet"
COUNTERS = ("sent", "failed", "retried", "deferred")


def add_snapshot(totals: dict[str, Any], snapshot: Snapshot, stale_s: float) -> dict[str, Any]:
    """``totals`` with one more snapshot's deliveries added, and its gauges."""
    lanes: dict[str, Any] = totals.setdefault("lanes", {})
    for lane, tally in snapshot.delivery.items():
        entry = lanes.setdefault(
            lane, {**dict.fromkeys(COUNTERS, 0), "buckets": [0] * len(LATENCY_BUCKETS),
                   "sum": 0.0, "count": 0},
        )  # fmt: skip
        for name in COUNTERS:
            entry[name] += getattr(tally, name)
        cumulative = tally.latency.cumulative(LATENCY_BUCKETS)
        entry["buckets"] = [a + b for a, b in zip(entry["buckets"], cumulative, strict=True)]
        entry["sum"] += tally.latency.total
        entry["count"] += tally.latency.count
    totals["workers_alive"] = snapshot.workers_alive(stale_s)
    totals["firing"] = [
        [a["rule"], a["severity"]] for a in snapshot.alerts if a["state"] == "firing"
    ]
    totals["providers_up"] = snapshot.provider_health
    totals["at"] = snapshot.at
    return totals


class FleetCollector(Collector):
    def __init__(self, store: Callable[[], MonitorStore | None]) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store()
        raw = store.get(KEY) if store is not None else None
        totals: dict[str, Any] = json.loads(raw) if raw else {}
        counters = {
            name: CounterMetricFamily(f"emailq_fleet_{name}", f"Emails {name}, all workers",
                                      labels=["lane"])
            for name in COUNTERS
        }  # fmt: skip
        latency = HistogramMetricFamily(
            "emailq_fleet_delivery_seconds",
            "Acceptance (or send_at) to provider acceptance, all workers", labels=["lane"],
        )  # fmt: skip
        for lane, entry in totals.get("lanes", {}).items():
            for name, family in counters.items():
                family.add_metric([lane], entry[name])
            buckets = [
                (f"{b:g}", n) for b, n in zip(LATENCY_BUCKETS, entry["buckets"], strict=True)
            ]
            buckets.append(("+Inf", entry["count"]))
            latency.add_metric([lane], buckets, entry["sum"])
        yield from counters.values()
        yield latency
        alive = GaugeMetricFamily("emailq_workers_alive", "Workers that reported recently")
        alive.add_metric([], totals.get("workers_alive", 0))
        yield alive
        up = GaugeMetricFamily("emailq_provider_up", "Provider health check", labels=["provider"])
        for provider, healthy in totals.get("providers_up", {}).items():
            up.add_metric([provider], 1.0 if healthy else 0.0)
        yield up
        firing = GaugeMetricFamily(
            "emailq_alerts_firing", "Monitor alerts firing", labels=["rule", "severity"]
        )
        for rule, severity in totals.get("firing", []):
            firing.add_metric([rule, severity], 1.0)
        yield firing
