"""The read side: history as JSON series over a range and a step (``GET /v1/stats``, the
dashboard, ``emailq status --watch``, the day report).

A longer step merges the snapshots' tallies and latency sketches, so its percentiles are
the percentiles of every delivery in it. A tenant's view holds only its own deliveries:
depth, workers, providers and alerts are the operator's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from emailq.monitor.recorder import Tally
from emailq.monitor.snapshot import LANE_NAMES, QUANTILES, Snapshot, figures
from emailq.monitor.store import MonitorStore

MAX_POINTS = 2000


class HistoryCache:
    """Snapshots of the last ``keep_s`` parsed once per process: a snapshot never changes
    once written, so each request fetches only the ones written since the last.

    And none at all while no newer one can exist yet: the monitor writes one snapshot per
    interval slot, each at or after its slot's time, so after the one at ``at`` nothing
    new comes before ``at`` plus the interval (the writer's, read from the snapshot's own
    ``elapsed_s`` when that is shorter than ours). A dashboard polling every second, or
    a thousand of them, then costs the broker one read per interval, not one per request.
    """

    def __init__(self, store: MonitorStore, keep_s: float = 7200.0,
                 interval_s: float | None = None) -> None:  # fmt: skip
        self.store = store
        self.keep_s = keep_s
        self.interval_s = interval_s  # None: read the store on every request
        self._lock = threading.Lock()
        self._points: list[Snapshot] = []
        self.reads = 0  # store reads for new snapshots (benchmarks/monitor.py prints it)

    def _nothing_new_before(self) -> float:
        if self.interval_s is None or not self._points:
            return -math.inf
        last = self._points[-1]
        return last.at + min(self.interval_s, max(last.elapsed_s, 1e-3))

    def range(self, since: float, until: float, now: float | None = None) -> list[Snapshot]:
        """Snapshots with ``since < at <= until``; ``now`` (the clock) lets the store read
        be skipped while no newer snapshot can exist."""
        with self._lock:
            floor = until - self.keep_s
            last = self._points[-1].at if self._points else floor
            if until > last and (now is None or now >= self._nothing_new_before()):
                self.reads += 1
                fresh = [Snapshot.from_json(body) for _, body in self.store.history(last, until)]
                self._points = [p for p in self._points if p.at > floor] + fresh
            cached = [p for p in self._points if since < p.at <= until]
            cached_from = self._points[0].at if self._points else until
        if since >= floor:
            return cached
        older = self.store.history(since, min(floor, cached_from - 1e-6))
        return [Snapshot.from_json(body) for _, body in older] + cached


def _lane_tallies(snapshot: Snapshot, tenant: str | None) -> dict[str, Tally]:
    if tenant is None:
        return snapshot.delivery
    return snapshot.tenants.get(tenant, {})


def _point(group: Sequence[Snapshot], tenant: str | None) -> dict[str, Any]:
    last = group[-1]
    elapsed = sum(s.elapsed_s for s in group)
    merged: dict[str, Tally] = {}
    for snapshot in group:
        for lane, tally in _lane_tallies(snapshot, tenant).items():
            merged.setdefault(lane, Tally()).merge(tally)
    lanes: dict[str, Any] = {}
    total = Tally()
    for lane in LANE_NAMES:
        tally = merged.get(lane, Tally())
        total.merge(tally)
        entry: dict[str, Any] = _counts(tally) | figures(tally, elapsed)
        if tenant is None and lane in last.lanes:
            state = last.lanes[lane]
            entry |= {"depth": state.depth, "backlog": state.backlog,
                      "oldest_age_s": state.oldest_age}  # fmt: skip
        lanes[lane] = entry
    point: dict[str, Any] = {"at": last.at, "elapsed_s": round(elapsed, 3), "lanes": lanes,
             "total": _counts(total) | figures(total, elapsed)}  # fmt: skip
    if tenant is None:
        point["total"]["backlog"] = last.backlog()
        point["firing"] = sum(1 for a in last.alerts if a.get("state") == "firing")
        sends: dict[str, Tally] = {}
        for snapshot in group:
            for name, tries in snapshot.sends.items():
                sends.setdefault(name, Tally()).merge(tries)
        point["providers"] = {name: send_figures(tries) for name, tries in sends.items()}
    return point


def _counts(tally: Tally) -> dict[str, int]:
    return {"sent": tally.sent, "failed": tally.failed, "retried": tally.retried,
            "deferred": tally.deferred}  # fmt: skip


class PointCache:
    """Points already computed: a step's group of snapshots only changes while it is the
    latest, so a request recomputes at most that one."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._points: dict[tuple[str | None, float, int], tuple[float, int, dict[str, Any]]] = {}

    def point(self, key: tuple[str | None, float, int], group: Sequence[Snapshot],
              tenant: str | None) -> dict[str, Any]:  # fmt: skip
        hit = self._points.get(key)
        if hit is not None and hit[0] == group[-1].at and hit[1] == len(group):
            return hit[2]
        computed = _point(group, tenant)
        if len(self._points) >= self.max_entries:
            self._points.clear()
        self._points[key] = (group[-1].at, len(group), computed)
        return computed


def series(
    snapshots: Sequence[Snapshot],
    step: float,
    tenant: str | None = None,
    cache: PointCache | None = None,
) -> list[dict[str, Any]]:
    """One point per ``step`` (aligned on multiples of it) that has snapshots."""
    groups: dict[int, list[Snapshot]] = {}
    for snapshot in snapshots:
        groups.setdefault(int((snapshot.at - 1e-9) // step), []).append(snapshot)
    if cache is None:
        return [_point(groups[key], tenant) for key in sorted(groups)]
    return [cache.point((tenant, step, key), groups[key], tenant) for key in sorted(groups)]


def current(snapshots: Sequence[Snapshot], stale_s: float) -> dict[str, Any]:
    """The latest snapshot's workers, providers and alerts (the operator's view)."""
    if not snapshots:
        return {"at": None, "workers": [], "providers": {}, "alerts": []}
    last = snapshots[-1]
    workers = [
        {"name": name, "provider": seen.provider, "last_seen": seen.last_seen,
         "alive": last.at - seen.last_seen <= stale_s}
        for name, seen in sorted(last.workers.items())
    ]  # fmt: skip
    providers: dict[str, dict[str, Any]] = {
        name: {"healthy": healthy} | _counts(last.providers.get(name, Tally()))
        for name, healthy in last.provider_health.items()
    }
    for name, tally in last.providers.items():
        providers.setdefault(name, {"healthy": None} | _counts(tally))
    for name, entry in providers.items():
        tally = last.providers.get(name, Tally())
        entry["error_rate"] = round(1 - tally.sent / tally.attempts, 5) if tally.attempts else None
    for name, tries in last.sends.items():
        entry = providers.setdefault(name, {"healthy": None} | _counts(Tally()) |
                                     {"error_rate": None})  # fmt: skip
        entry["send"] = send_figures(tries)
    return {"at": last.at, "workers": workers, "providers": providers, "alerts": last.alerts}


def send_figures(tries: Tally) -> dict[str, Any]:
    """One provider's tries in an interval: how many, how many failed, and how long the
    accepted ones took from going out to the provider's answer (seconds)."""
    figures: dict[str, Any] = {"tries": tries.attempts, "accepted": tries.sent,
                               "error_rate": round(1 - tries.sent / tries.attempts, 5)
                               if tries.attempts else None}  # fmt: skip
    values = tries.latency.quantiles(tuple(QUANTILES.values()))
    for name, value in zip(QUANTILES, values, strict=True):
        figures[name] = None if value is None else round(value, 6)
    return figures
