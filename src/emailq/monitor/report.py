"""``emailq report --date 2026-06-13 [--wedding w42]``: one day's volumes, latencies,
failures and alerts per lane and per wedding, as JSON and as one HTML page with inline SVG
(no external assets)."""

from __future__ import annotations

import html
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from emailq.monitor.recorder import Tally
from emailq.monitor.snapshot import LANE_NAMES, Snapshot, tally_json
from emailq.monitor.store import MonitorStore

COLOURS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#7f7f7f")


def day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def _strip(tally: Tally, elapsed: float) -> dict[str, Any]:
    body = tally_json(tally, elapsed)
    body.pop("latency")
    return body


def build_report(store: MonitorStore, day: date, wedding: str | None = None) -> dict[str, Any]:
    start, end = day_bounds(day)
    snapshots = [Snapshot.from_json(body) for _, body in store.history(start, end)]
    lanes: dict[str, Tally] = {lane: Tally() for lane in LANE_NAMES}
    weddings: dict[str, Tally] = {}
    hourly: list[dict[str, Any]] = [{"hour": h, "lanes": {}} for h in range(24)]
    hourly_tallies = [{lane: Tally() for lane in LANE_NAMES} for _ in range(24)]
    events = []
    for snapshot in snapshots:
        hour = min(23, int((snapshot.at - start - 1e-9) // 3600))
        for lane, tally in snapshot.delivery.items():
            lanes[lane].merge(tally)
            hourly_tallies[hour][lane].merge(tally)
        for name, tally in snapshot.weddings.items():
            if wedding is None or name == wedding:
                weddings.setdefault(name, Tally()).merge(tally)
        events.extend(snapshot.events)
    for hour, tallies in enumerate(hourly_tallies):
        hourly[hour]["lanes"] = {lane: _strip(t, 3600) for lane, t in tallies.items()}
    elapsed = max(1.0, sum(s.elapsed_s for s in snapshots))
    return {
        "date": day.isoformat(), "wedding": wedding, "snapshots": len(snapshots),
        "lanes": {lane: _strip(t, elapsed) for lane, t in lanes.items()},
        "weddings": {name: _strip(t, elapsed) for name, t in sorted(weddings.items())},
        "hourly": hourly, "alerts": events,
    }  # fmt: skip


def svg_lines(series: dict[str, list[float | None]], title: str, unit: str) -> str:
    """A small line chart, one line per series over 24 hours."""
    width, height, pad = 640, 200, 36
    values = [v for line in series.values() for v in line if v is not None]
    top = max(values, default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}"'
             f' role="img"><title>{html.escape(title)}</title>',
             f'<text x="{pad}" y="14" font-size="13">{html.escape(title)} (max {top:.3g}'
             f' {unit})</text>']  # fmt: skip
    for colour, (name, line) in zip(COLOURS, series.items(), strict=False):
        step = (width - 2 * pad) / 23
        points = " ".join(
            f"{pad + i * step:.1f},{height - v / top * (height - 30):.1f}"
            for i, v in enumerate(line)
            if v is not None
        )
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"'
                         f' points="{points}"><title>{name}</title></polyline>')  # fmt: skip
    legend = " ".join(
        f'<tspan fill="{c}">■ {html.escape(n)}</tspan>'
        for c, n in zip(COLOURS, series, strict=False)
    )
    parts.append(f'<text x="{pad}" y="{height + 20}" font-size="12">{legend}</text></svg>')
    return "".join(parts)


def _table(rows: dict[str, dict[str, Any]], first: str) -> str:
    columns = ("sent", "failed", "retried", "deferred", "success_rate", "p50", "p95", "p99")
    head = "".join(f"<th>{c}</th>" for c in (first, *columns))
    body = "".join(
        "<tr><td>"
        + html.escape(name)
        + "</td>"
        + "".join(f"<td>{'' if row.get(c) is None else row.get(c)}</td>" for c in columns)
        + "</tr>"
        for name, row in rows.items()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any]) -> str:
    hourly = report["hourly"]
    volume = {lane: [h["lanes"][lane]["sent"] for h in hourly] for lane in LANE_NAMES}
    p99 = {lane: [h["lanes"][lane]["p99"] for h in hourly] for lane in LANE_NAMES}
    alerts = (
        "".join(
            f"<li>{datetime.fromtimestamp(e['at'], UTC):%H:%M} {html.escape(e['status'])}"
            f" {html.escape(e['rule'])}: {html.escape(e['summary'])}</li>"
            for e in report["alerts"]
        )
        or "<li>none</li>"
    )
    title = f"emailq report {report['date']}" + (f" · wedding {report['wedding']}"
                                                 if report["wedding"] else "")  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}</style>
</head><body><h1>{html.escape(title)}</h1>
<h2>Per lane</h2>{_table(report["lanes"], "lane")}
{svg_lines(volume, "delivered per hour", "emails")}
{svg_lines(p99, "p99 latency per hour", "s")}
<h2>Per wedding</h2>{_table(report["weddings"], "wedding")}
<h2>Alerts</h2><ul>{alerts}</ul></body></html>"""


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(report, indent=2))
    html_path.write_text(render_html(report))
    return json_path, html_path
