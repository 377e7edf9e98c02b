"""One interval of the queue as the monitor saw it: per lane, per tenant, per wedding, per
provider and per worker. Built from the broker's depth and the workers' samples
(:func:`build_snapshot`); kept as JSON in the history, sketches included, so that any
longer step merges sketches instead of averaging percentiles (:mod:`.series`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from emailq.broker import Stats
from emailq.lanes import LANE_ORDER
from emailq.monitor.recorder import Tally

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
LANE_NAMES = tuple(lane.value for lane in LANE_ORDER)


def figures(tally: Tally, elapsed_s: float) -> dict[str, float | None]:
    """The derived numbers of a tally over ``elapsed_s``: throughput, success, percentiles."""
    out: dict[str, float | None] = {
        "throughput_per_min": round(tally.sent * 60 / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        "success_rate": round(tally.sent / tally.attempts, 5) if tally.attempts else None,
    }
    values = tally.latency.quantiles(tuple(QUANTILES.values()))
    for name, value in zip(QUANTILES, values, strict=True):
        out[name] = None if value is None else round(value, 6)
    return out


def tally_json(tally: Tally, elapsed_s: float) -> dict[str, Any]:
    return tally.to_json() | figures(tally, elapsed_s)


@dataclass
class LaneState:
    depth: dict[str, int] = field(default_factory=dict)  # state → messages
    oldest_age: float = 0.0

    @property
    def backlog(self) -> int:
        live = ("queued", "scheduled", "leased", "retrying")
        return sum(n for state, n in self.depth.items() if state in live)


@dataclass
class WorkerSeen:
    last_seen: float
    provider: str = ""


@dataclass
class Snapshot:
    at: float
    elapsed_s: float  # since the snapshot before (the interval, or less at a start)
    lanes: dict[str, LaneState] = field(default_factory=dict)
    delivery: dict[str, Tally] = field(default_factory=dict)  # lane → this interval
    tenants: dict[str, dict[str, Tally]] = field(default_factory=dict)  # tenant → lane → tally
    weddings: dict[str, Tally] = field(default_factory=dict)
    providers: dict[str, Tally] = field(default_factory=dict)
    provider_health: dict[str, bool] = field(default_factory=dict)
    sends: dict[str, Tally] = field(default_factory=dict)  # provider → tries, send latency
    workers: dict[str, WorkerSeen] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # pending and firing
    events: list[dict[str, Any]] = field(default_factory=list)  # fired / resolved now

    def lane_tally(self, lanes: Iterable[str] | None = None) -> Tally:
        total = Tally()
        for lane in lanes or LANE_NAMES:
            if lane in self.delivery:
                total.merge(self.delivery[lane])
        return total

    def backlog(self, lanes: Iterable[str] | None = None) -> int:
        return sum(self.lanes[x].backlog for x in lanes or LANE_NAMES if x in self.lanes)

    def queued(self, lanes: Iterable[str] | None = None) -> int:
        return sum(
            self.lanes[x].depth.get("queued", 0) for x in lanes or LANE_NAMES if x in self.lanes
        )

    def workers_alive(self, stale_after_s: float) -> int:
        return sum(1 for w in self.workers.values() if self.at - w.last_seen <= stale_after_s)

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> bytes:
        body = {
            "at": self.at, "elapsed_s": self.elapsed_s,
            "lanes": {name: {"depth": s.depth, "oldest_age": round(s.oldest_age, 3)}
                      for name, s in self.lanes.items()},
            "delivery": {name: t.to_json() for name, t in self.delivery.items()},
            "tenants": {tenant: {lane: t.to_json() for lane, t in lanes.items()}
                        for tenant, lanes in self.tenants.items()},
            "weddings": {name: t.to_json() for name, t in self.weddings.items()},
            "providers": {name: t.to_json() for name, t in self.providers.items()},
            "provider_health": self.provider_health,
            "sends": {name: t.to_json() for name, t in self.sends.items()},
            "workers": {name: {"last_seen": w.last_seen, "provider": w.provider}
                        for name, w in self.workers.items()},
            "alerts": self.alerts, "events": self.events,
        }  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Snapshot:
        data = json.loads(raw)
        return cls(
            at=float(data["at"]),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            lanes={name: LaneState(dict(s["depth"]), float(s["oldest_age"]))
                   for name, s in data.get("lanes", {}).items()},
            delivery=_tallies(data.get("delivery", {})),
            tenants={t: _tallies(lanes) for t, lanes in data.get("tenants", {}).items()},
            weddings=_tallies(data.get("weddings", {})),
            providers=_tallies(data.get("providers", {})),
            provider_health={k: bool(v) for k, v in data.get("provider_health", {}).items()},
            sends=_tallies(data.get("sends", {})),
            workers={name: WorkerSeen(float(w["last_seen"]), str(w.get("provider", "")))
                     for name, w in data.get("workers", {}).items()},
            alerts=list(data.get("alerts", [])),
            events=list(data.get("events", [])),
        )  # fmt: skip


def _tallies(data: Mapping[str, Any]) -> dict[str, Tally]:
    return {name: Tally.from_json(value) for name, value in data.items()}


def _add(into: dict[str, Tally], name: str, tally: Tally) -> None:
    into.setdefault(name, Tally()).merge(tally)


def build_snapshot(
    at: float,
    stats: Stats,
    samples: Iterable[bytes],
    before: Snapshot | None,
    provider_health: Mapping[str, bool],
    worker_ttl_s: float,
    default_elapsed_s: float,
) -> Snapshot:
    """The snapshot at ``at``: depth from ``stats``, deliveries from ``samples`` (worker
    windows taken in since ``before``), workers seen within ``worker_ttl_s`` kept."""
    elapsed = at - before.at if before is not None else default_elapsed_s
    snapshot = Snapshot(at=at, elapsed_s=max(elapsed, 1e-3))
    for lane, lane_stats in stats.lanes.items():
        snapshot.lanes[lane.value] = LaneState(
            {state.value: n for state, n in lane_stats.counts.items()}, lane_stats.oldest_age
        )
    if before is not None:  # workers stay listed (as not alive) for a while after they stop
        snapshot.workers = {
            name: seen for name, seen in before.workers.items()
            if at - seen.last_seen <= worker_ttl_s
        }  # fmt: skip
    for raw in samples:
        _take_in(snapshot, json.loads(raw))
    snapshot.provider_health = dict(provider_health)
    return snapshot


def _take_in(snapshot: Snapshot, sample: Mapping[str, Any]) -> None:
    provider = str(sample.get("provider", ""))
    worker = str(sample.get("worker", ""))
    seen = snapshot.workers.get(worker)
    if seen is None or seen.last_seen < float(sample["at"]):
        snapshot.workers[worker] = WorkerSeen(float(sample["at"]), provider)
    for lane, tenants in sample.get("cells", {}).items():
        for tenant, raw in tenants.items():
            tally = Tally.from_json(raw)
            _add(snapshot.delivery, lane, tally)
            _add(snapshot.tenants.setdefault(tenant, {}), lane, Tally.from_json(raw))
            if provider:
                _add(snapshot.providers, provider, Tally.from_json(raw))
    for wedding, raw in sample.get("weddings", {}).items():
        _add(snapshot.weddings, wedding, Tally.from_json(raw))
    for name, raw in sample.get("sends", {}).items():
        _add(snapshot.sends, name, Tally.from_json(raw))
