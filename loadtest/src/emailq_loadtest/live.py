"""The terminal view while a run goes: offered and delivered rate, backlog, p99 per lane."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from emailq.lanes import LANE_ORDER
from emailq_loadtest.measure import LiveView
from emailq_loadtest.scenarios import Scenario
from emailq_loadtest.slo import SloConfig


def segment_label(scenario: Scenario, elapsed: float) -> str:
    for start, end, segment in scenario.windows():
        if start <= elapsed < end:
            return f"{segment.label} (×{segment.multiplier:g})"
    return "draining" if elapsed >= scenario.duration_s else "starting"


def render(view: LiveView, scenario: Scenario, slo: SloConfig, status: str = "") -> Group:
    header = Text.assemble(
        (f"emailq loadtest · {scenario.name}", "bold"),
        f"  {min(view.elapsed, scenario.duration_s):5.0f}/{scenario.duration_s:.0f} s",
        f"  · {segment_label(scenario, view.elapsed)}",
    )
    rates = Text.assemble(
        f"offered {view.offered_per_min:9,.0f}/min   delivered {view.delivered_per_min:9,.0f}/min"
        f"   backlog {view.backlog:8,}   sent {view.sent:9,}   delivered {view.delivered:9,}",
        (f"   duplicates {view.duplicates}", "red") if view.duplicates else "",
    )
    table = Table(box=None, padding=(0, 2))
    for column in ("lane", "sent", "delivered", "p99 (last 5 s)", "objective"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for lane in LANE_ORDER:
        p99 = view.p99_by_lane[lane]
        limit = slo.p99_s.get(lane)
        style = "red" if limit is not None and p99 > limit else ""
        table.add_row(
            lane.value,
            f"{view.sent_by_lane[lane]:,}",
            f"{view.delivered_by_lane[lane]:,}",
            Text(f"{p99 * 1000:,.0f} ms" if view.delivered_by_lane[lane] else "-", style=style),
            f"p99 ≤ {limit * 1000:,.0f} ms" if limit is not None else "",
        )
    parts: list[Text | Table] = [header, rates, table]
    if status:
        parts.append(Text(status, style="yellow"))
    return Group(*parts)
