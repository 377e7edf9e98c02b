"""``emailq status --watch``: the monitor's latest numbers in the terminal, refreshed."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table

from emailq.deployment import Deployment
from emailq.monitor.series import HistoryCache, current, series
from emailq.monitor.snapshot import LANE_NAMES
from emailq.monitor.store import open_store


def _num(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def view(body: dict[str, Any], where: str) -> Group:
    lanes = Table(title=f"emailq {where} · last minute", expand=False)
    for column in ("lane", "queued", "leased", "retrying", "dead", "oldest", "sent/min",
                   "success", "p50", "p95", "p99"):  # fmt: skip
        lanes.add_column(column, justify="left" if column == "lane" else "right")
    point = body["points"][-1]["lanes"] if body["points"] else {}
    for lane in LANE_NAMES:
        entry = point.get(lane, {})
        depth = entry.get("depth", {})
        lanes.add_row(
            lane, *(str(depth.get(s, 0)) for s in ("queued", "leased", "retrying", "dead")),
            _num(entry.get("oldest_age_s"), " s", 1), _num(entry.get("throughput_per_min"), "", 0),
            _num(entry.get("success_rate"), "", 3), _num(entry.get("p50"), " s", 3),
            _num(entry.get("p95"), " s", 3), _num(entry.get("p99"), " s", 3),
        )  # fmt: skip
    now = body["current"]
    workers = Table(title="workers and providers")
    workers.add_column("name")
    workers.add_column("state")
    for worker in now["workers"]:
        age = time.time() - worker["last_seen"]
        workers.add_row(worker["name"], f"{'alive' if worker['alive'] else 'silent'} ({age:.0f} s)")
    for name, provider in now["providers"].items():
        workers.add_row(f"provider {name}", "healthy" if provider["healthy"] else "FAILING")
    alerts = Table(title="alerts")
    for column in ("rule", "state", "severity", "value", "summary"):
        alerts.add_column(column)
    for alert in now["alerts"]:
        alerts.add_row(alert["rule"], alert["state"], alert["severity"],
                       _num(alert["value"], "", 3), alert["summary"])  # fmt: skip
    return Group(lanes, workers, alerts)


def snapshot_body(
    cache: HistoryCache, at: float, interval_s: float, stale_s: float
) -> dict[str, Any]:
    snapshots = cache.range(at - 120, at)
    return {"points": series(snapshots, 60), "current": current(snapshots, stale_s)}


def watch(deployment: Deployment, where: str, refresh_s: float = 2.0) -> None:
    """Until Ctrl-C."""
    settings = deployment.settings.monitor
    store = open_store(deployment.broker, deployment.clock)
    cache = HistoryCache(store, keep_s=600)
    try:
        body = snapshot_body(cache, deployment.clock(), settings.interval_s, 3 * settings.publish_s)
        with Live(view(body, where), refresh_per_second=4) as live:
            while True:
                time.sleep(refresh_s)
                at = deployment.clock()
                live.update(view(snapshot_body(cache, at, settings.interval_s,
                                               3 * settings.publish_s), where))  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
