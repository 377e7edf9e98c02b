"""The run's report: a JSON file of the figures, and a self-contained HTML page of them.

:func:`build` turns what was measured into plain JSON-shaped data; :func:`html` draws the
page from that data alone (inline SVG plots, inline CSS, nothing fetched), so the page and
the JSON can never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from rich.table import Table

from emailq.lanes import LANE_ORDER, Lane
from emailq.percentiles import percentile
from emailq_loadtest import svg
from emailq_loadtest.measure import (
    LatencySummary,
    Ledger,
    ResourceLog,
    bucket_size,
    distribution,
    drift,
    latency_series,
    throughput_series,
)
from emailq_loadtest.scenarios import Scenario
from emailq_loadtest.slo import Accounting, SloConfig, Verdict, passed

LANE_COLORS = dict(zip(LANE_ORDER, svg.PALETTE, strict=False))


@dataclass(frozen=True, slots=True)
class StepResult:
    """One stress step: its rate, figures and verdicts."""

    rate_per_min: float
    sent: int
    held_ratio: float
    p99_ms: dict[str, float]
    verdicts: list[Verdict]

    @property
    def ok(self) -> bool:
        return passed(self.verdicts)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def lane_figures(summary: LatencySummary, sent: int) -> dict[str, Any]:
    return {
        "sent": sent, "delivered": summary.count,
        "p50_ms": _ms(summary.p50), "p95_ms": _ms(summary.p95),
        "p99_ms": _ms(summary.p99), "max_ms": _ms(summary.max),
    }  # fmt: skip


def build(
    *,
    scenario: Scenario,
    service: Mapping[str, Any],
    ledger: Ledger,
    accounting: Accounting,
    lost: Mapping[str, int],
    unexpected: int,
    slo: SloConfig,
    verdicts: Sequence[Verdict],
    memory: ResourceLog,
    steps: Sequence[StepResult] = (),
    held_per_min: float | None = None,
    broke: bool = False,
    errors: Sequence[str] = (),
    pool: Mapping[str, Any] | None = None,
    webhooks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    duration = scenario.duration_s
    seconds = int(duration) + 1
    summaries = ledger.summaries()
    bucket = bucket_size(duration)
    lag = sorted(ledger.lag)
    calls = sorted(ledger.intake_calls)
    figures: dict[str, Any] = {
        "passed": passed(verdicts),
        "scenario": {
            "name": scenario.name, "rate_per_min": scenario.rate_per_min,
            "duration_s": duration, "peak_rate_per_min": scenario.peak_rate_per_min(),
            "segments": [
                {"label": seg.label, "start_s": round(start, 3), "end_s": round(end, 3),
                 "rate_per_min": scenario.rate_per_min * seg.multiplier}
                for start, end, seg in scenario.windows()
            ],
        },
        "service": dict(service),
        "accounting": {
            "sent": accounting.sent, "delivered": accounting.delivered,
            "lost": accounting.lost, "lost_breakdown": dict(lost),
            "duplicates": accounting.duplicates, "duplicate_ids": ledger.duplicate_ids,
            "unexpected": unexpected, "success_rate": round(accounting.success, 6),
        },
        "throughput": {
            "offered_per_min": round(accounting.sent / duration * 60, 1),
            "delivered_per_min": round(accounting.delivered / duration * 60, 1),
            "per_second": throughput_series(ledger, seconds),
        },
        "lanes": {
            lane.value: lane_figures(summaries[lane], ledger.lanes[lane].sent)
            for lane in LANE_ORDER
        },
        "latency_over_time": {
            "bucket_s": bucket,
            "lanes": {
                lane.value: [[t, _ms(p50), _ms(p99)]
                             for t, p50, p99 in latency_series(ledger.lanes[lane], bucket)]
                for lane in LANE_ORDER
            },
        },
        "distribution": {
            lane.value: [[_ms(v), round(share, 5)]
                         for v, share in distribution(ledger.lanes[lane])]
            for lane in LANE_ORDER
        },
        "generator_lag_ms": {"p99": _ms(percentile(lag, 99)), "max": _ms(lag[-1] if lag else 0)},
        "intake_call_ms": {
            "calls": len(calls), "p50": _ms(percentile(calls, 50)),
            "p99": _ms(percentile(calls, 99)), "max": _ms(calls[-1] if calls else 0),
        },
        "drift": _drift(ledger, duration),
        "memory": {"processes": memory.summary(),
                   "samples": [[round(t, 1), s] for t, s in memory.samples]},
        "slo": {
            "config": {
                "throughput": slo.throughput, "grace_s": slo.grace_s, "success": slo.success,
                "p99_s": {lane.value: limit for lane, limit in slo.p99_s.items()},
                "max_lost": slo.max_lost, "max_duplicates": slo.max_duplicates,
            },
            "verdicts": [v.as_dict() for v in verdicts],
        },
        "errors": list(errors),
    }  # fmt: skip
    if pool is not None:
        figures["workers"] = dict(pool)
    if webhooks is not None:
        figures["webhooks"] = dict(webhooks)
    if scenario.is_ramp:
        figures["stress"] = {
            "highest_rate_held_per_min": held_per_min,
            "broke": broke,  # False: every step held, the ramp ended first
            "steps": [
                {"rate_per_min": s.rate_per_min, "sent": s.sent, "ok": s.ok,
                 "held_ratio": round(s.held_ratio, 4), "p99_ms": s.p99_ms,
                 "verdicts": [v.as_dict() for v in s.verdicts]}
                for s in steps
            ],
        }  # fmt: skip
    return figures


def _drift(ledger: Ledger, duration: float) -> dict[str, Any]:
    """p99 in the first and the last tenth of the run, per lane with mail in both."""
    out = {}
    for lane in LANE_ORDER:
        first, last = drift(ledger.lanes[lane], duration)
        if first and last:
            out[lane.value] = {"p99_first_ms": _ms(first), "p99_last_ms": _ms(last),
                               "change_ms": _ms(last - first)}  # fmt: skip
    return out


def write(figures: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(figures, indent=1) + "\n")
    html_path.write_text(html(figures))
    return json_path, html_path


# -- the HTML page ----------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1c2833;
       max-width: 1140px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border-bottom: 1px solid #d5dbdb; padding: 3px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.pass { color: #1e8449; font-weight: bold; } .fail { color: #c0392b; font-weight: bold; }
.meta { color: #566573; font-size: 13px; } svg { display: block; margin: 10px 0; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return '<span class="pass">PASS</span>' if value else '<span class="fail">FAIL</span>'
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _bands(figures: Mapping[str, Any]) -> list[svg.Band]:
    segments = figures["scenario"]["segments"]
    bands = [svg.Band(s["start_s"], s["end_s"], s["label"]) for s in segments]
    return (bands if len(segments) > 1 else []) + _fault_bands(figures)


def _fault_bands(figures: Mapping[str, Any]) -> list[svg.Band]:
    """The outage as a band, and each switch as a thin one at the moment it happened."""
    fault = figures.get("fault")
    if not fault:
        return []
    start, end = fault["outage_s"]
    thin = max(0.2, figures["scenario"]["duration_s"] / 500)
    return [svg.Band(start, end, "primary down"), *(
        svg.Band(at, at + thin, f"← {name}") for name, at in fault["events_s"].items()
        if name.startswith("mail through")
    )]  # fmt: skip


def _fault(figures: Mapping[str, Any]) -> str:
    fault = figures.get("fault")
    if not fault:
        return ""
    rows = [[name, f"{at:.2f}"] for name, at in fault["events_s"].items()]
    return "".join([
        f"<h2>Fault: {escape(fault['kind'])}</h2>",
        _table(["event", "seconds into the load"], rows),
        f"<p class=meta>mail through the secondary {_seconds(fault['switch_after_s'])} after the"
        f" primary stopped; back on the primary {_seconds(fault['failback_after_s'])} after it"
        " came back (the workers' failback delay included)</p>",
    ])  # fmt: skip


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def throughput_chart(figures: Mapping[str, Any]) -> str:
    series = figures["throughput"]["per_second"]
    step = max(1, int(figures["latency_over_time"]["bucket_s"]))

    def per_min(counts: Sequence[int]) -> list[tuple[float, float]]:
        return [(float(i), sum(counts[i : i + step]) / step * 60)
                for i in range(0, len(counts), step)]  # fmt: skip

    lines = [svg.Series("offered", per_min(series["offered"]), "#7f8c8d", dashed=True),
             svg.Series("delivered", per_min(series["delivered"]), "#2e86c1")]  # fmt: skip
    workers = figures.get("workers")
    if workers and workers["timeline"]:
        steps = [(t, float(running)) for t, running, _ in workers["timeline"]]
        lines.append(svg.Series("worker processes", steps, "#28b463", width=1.4, right=True))
    return svg.line_chart(
        f"Throughput (emails/min, {step} s buckets)", lines,
        svg.Axis("seconds into the run"), svg.Axis("emails/min", fmt=lambda v: f"{v:,.0f}"),
        bands=_bands(figures),
        y2=svg.Axis("workers", fmt=lambda v: f"{v:g}") if len(lines) > 2 else None,
    )  # fmt: skip


def pool_summary(figures: Mapping[str, Any]) -> str:
    """The worker-minutes sentence, for the page and the console."""
    workers = figures.get("workers")
    if not workers:
        return ""
    used, span = workers["worker_minutes"], workers["span_s"]
    fixed = workers.get("fixed_pool_of_max_worker_minutes", 0.0)
    if workers["mode"] == "fixed":
        return (f"worker pool: fixed, {workers['peak_running']} processes: {used:,.1f} "
                f"worker-minutes over {span:,.0f} s")  # fmt: skip
    return (
        f"worker pool: autoscaled {workers['min']}..{workers['max']}: {used:,.1f} worker-minutes"
        f" over {span:,.0f} s (mean {workers['mean_workers']:g}, peak"
        f" {workers['peak_running']} running), against {fixed:,.1f} for a fixed pool of"
        f" {workers['max']} ({workers['share_of_fixed_pool']:.0%});"
        f" {workers['decisions']['up']} decisions up, {workers['decisions']['down']} down"
    )


def _pool(figures: Mapping[str, Any]) -> str:
    workers = figures.get("workers")
    if not workers:
        return ""
    rows = [[f"{t:,.1f}", n, why] for t, n, why in workers.get("changes", [])]
    table = _table(["s into the run", "pool", "the autoscaler's reason"], rows) if rows else ""
    return f"<h2>Worker pool</h2><p class=meta>{escape(pool_summary(figures))}</p>{table}"


def _ms_axis(label: str) -> svg.Axis:
    return svg.Axis(label, log=True, fmt=lambda v: f"{v:,.0f}" if v >= 1 else f"{v:g}")


def _refs(figures: Mapping[str, Any]) -> list[svg.RefLine]:
    limits = figures["slo"]["config"]["p99_s"]
    return [svg.RefLine(limit * 1000, f"{lane} p99 objective", LANE_COLORS[Lane(lane)])
            for lane, limit in limits.items()]  # fmt: skip


def latency_chart(figures: Mapping[str, Any]) -> str:
    lanes = figures["latency_over_time"]["lanes"]
    series = [
        svg.Series(f"{lane} p99", [(t, max(p99, 0.1)) for t, _, p99 in points],
                   LANE_COLORS[Lane(lane)])
        for lane, points in lanes.items() if points
    ]  # fmt: skip
    bucket = figures["latency_over_time"]["bucket_s"]
    return svg.line_chart(
        f"End-to-end latency per lane (p99 of each {bucket:g} s, by scheduled time)",
        series, svg.Axis("seconds into the run"), _ms_axis("ms (log)"),
        bands=_bands(figures), refs=_refs(figures),
    )  # fmt: skip


def distribution_chart(figures: Mapping[str, Any]) -> str:
    series = [
        svg.Series(lane, [(max(ms, 0.1), share * 100) for ms, share in points],
                   LANE_COLORS[Lane(lane)])
        for lane, points in figures["distribution"].items() if points
    ]  # fmt: skip
    return svg.line_chart(
        "Latency distribution per lane (share of the lane's emails delivered within x)",
        series, _ms_axis("ms (log)"), svg.Axis("% of emails", fmt=lambda v: f"{v:.0f}"),
    )  # fmt: skip


def _summary(figures: Mapping[str, Any]) -> str:
    account = figures["accounting"]
    scenario = figures["scenario"]
    verdicts = figures["slo"]["verdicts"]
    lanes = figures["lanes"]
    return "".join([
        f"<h1>emailq loadtest: {escape(scenario['name'])} "
        f"{_cell(bool(figures['passed']))}</h1>",
        f"<p class=meta>{scenario['rate_per_min']:,.0f}/min nominal "
        f"(peak {scenario['peak_rate_per_min']:,.0f}/min) for {scenario['duration_s']:g} s · "
        + escape(" · ".join(f"{k}: {v}" for k, v in figures["service"].items())) + "</p>",
        "<h2>SLO verdicts</h2>",
        _table(["objective", "target", "measured", "verdict"],
               [[v["name"], v["target"], v["actual"], bool(v["ok"])] for v in verdicts]),
        "<h2>Delivery accounting (every id sent, matched at the sink)</h2>",
        _table(["sent", "delivered", "lost", "duplicates", "unexpected", "success"],
               [[account["sent"], account["delivered"], account["lost"],
                 account["duplicates"], account["unexpected"],
                 f"{account['success_rate']:.3%}"]]),
        "<p class=meta>lost: " + escape(_breakdown(account["lost_breakdown"])) + "</p>",
        "<h2>Latency per lane (scheduled send time → receipt at the sink)</h2>",
        _table(["lane", "sent", "delivered", "p50 ms", "p95 ms", "p99 ms", "max ms"],
               [[lane, f["sent"], f["delivered"], f["p50_ms"], f["p95_ms"], f["p99_ms"],
                 f["max_ms"]] for lane, f in lanes.items() if f["sent"]]),
    ])  # fmt: skip


def _breakdown(lost: Mapping[str, int]) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in lost.items()) or "none"


def _stress(figures: Mapping[str, Any]) -> str:
    stress = figures.get("stress")
    if not stress:
        return ""
    held = stress["highest_rate_held_per_min"]
    rows = [[f"{s['rate_per_min']:,.0f}/min", s["sent"], f"{s['held_ratio']:.2%}",
             ", ".join(f"{k} {v:,.0f} ms" for k, v in s["p99_ms"].items()), bool(s["ok"])]
            for s in stress["steps"]]  # fmt: skip
    ending = "" if stress["broke"] else " (no step broke: the ramp ended first)"
    return (f"<h2>Stress steps: highest rate held {held or 0:,.0f}/min{ending}</h2>"
            + _table(["step", "sent", "in time", "p99", "verdict"], rows))  # fmt: skip


def _resources(figures: Mapping[str, Any]) -> str:
    memory = figures["memory"]["processes"]
    delivered = max(1, figures["accounting"]["delivered"])
    rows = [
        [name, m["start_mb"], m["end_mb"], m["max_mb"], m.get("cpu_s", 0.0),
         f"{m.get('cpu_s', 0.0) / delivered * 1000:.3f}"]
        for name, m in memory.items()
    ]  # fmt: skip
    drift_rows = [[lane, d["p99_first_ms"], d["p99_last_ms"], d["change_ms"]]
                  for lane, d in figures["drift"].items()]  # fmt: skip
    lag, intake = figures["generator_lag_ms"], figures["intake_call_ms"]
    return "".join([
        "<h2>Processes: memory (RSS, MB) and CPU while the load ran</h2>",
        _table(["process", "RSS first", "RSS last", "RSS largest", "CPU s", "CPU ms/email"],
               rows),
        "<h2>Latency drift (p99, first tenth of the run vs last tenth)</h2>",
        _table(["lane", "first ms", "last ms", "change ms"], drift_rows),
        f"<p class=meta>generator lag behind the schedule (counted in the latency): "
        f"p99 {lag['p99']:,.1f} ms, max {lag['max']:,.1f} ms · intake calls "
        f"(enqueue_many, or HTTP requests): {intake['calls']:,}, p50 {intake['p50']:,.1f} ms, "
        f"p99 {intake['p99']:,.1f} ms, max {intake['max']:,.1f} ms</p>",
    ])  # fmt: skip


def webhooks_line(hooks: Mapping[str, Any]) -> str:
    lag = hooks["sent_lag_ms"]
    return (
        f"webhook events: {hooks['events']:,} received ({hooks['by_type'].get('email.sent', 0):,}"
        f" email.sent of {hooks['expected_sent']:,} delivered), {hooks['duplicates']:,} "
        f"duplicates, {hooks['bad_signatures']:,} bad signatures · event lag (sent → received)"
        f" p50 {lag['p50']:,.0f} ms, p99 {lag['p99']:,.0f} ms, max {lag['max']:,.0f} ms"
    )


def _webhooks(figures: Mapping[str, Any]) -> str:
    hooks = figures.get("webhooks")
    if not hooks:
        return ""
    return f"<h2>Webhooks</h2><p class=meta>{escape(webhooks_line(hooks))}</p>"


def memory_chart(figures: Mapping[str, Any]) -> str:
    """RSS over time per process; only worth drawing with a few samples."""
    samples = figures["memory"]["samples"]
    if len(samples) < 3:
        return ""
    names = sorted({name for _, sample in samples for name in sample})
    series = [
        svg.Series(name, [(t, sample[name]) for t, sample in samples if sample.get(name)],
                   svg.PALETTE[index % len(svg.PALETTE)])
        for index, name in enumerate(names)
    ]  # fmt: skip
    return svg.line_chart(
        "Memory per process (RSS, MB)", series, svg.Axis("seconds into the run"),
        svg.Axis("MB", fmt=lambda v: f"{v:,.0f}"), height=240,
    )  # fmt: skip


def html(figures: Mapping[str, Any]) -> str:
    errors = "".join(f"<li>{escape(e)}</li>" for e in figures.get("errors", []))
    return "\n".join([
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>emailq loadtest: {escape(figures['scenario']['name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        _summary(figures),
        _fault(figures),
        "<h2>Plots</h2>",
        throughput_chart(figures), latency_chart(figures), distribution_chart(figures),
        _pool(figures),
        _stress(figures),
        _webhooks(figures),
        _resources(figures),
        memory_chart(figures),
        f"<h2>Errors</h2><ul>{errors}</ul>" if errors else "",
        "</body></html>",
    ])  # fmt: skip


def console_table(figures: Mapping[str, Any]) -> Table:
    table = Table(title="emailq loadtest: SLO verdicts")
    for column in ("objective", "target", "measured", "verdict"):
        table.add_column(column)
    for v in figures["slo"]["verdicts"]:
        verdict = "[green]PASS[/]" if v["ok"] else "[red]FAIL[/]"
        table.add_row(v["name"], v["target"], v["actual"], verdict)
    return table


def lanes_table(figures: Mapping[str, Any]) -> Table:
    table = Table(title="latency per lane (scheduled time → sink)")
    for column in ("lane", "sent", "delivered", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for lane, f in figures["lanes"].items():
        if f["sent"]:
            ms = (f"{f[k]:,.0f}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
            table.add_row(lane, f"{f['sent']:,}", f"{f['delivered']:,}", *ms)
    return table
