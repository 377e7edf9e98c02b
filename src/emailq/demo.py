"""`emailq demo`: a wedding Saturday in under a minute, on the embedded default.

Three weddings' invitation runs (bulk) are queued first and start draining into the
built-in SMTP sink. Then, mid-run, the wedding today gets vendor updates and a ceremony
change that must reach its 40 vendors and guests at once: those go critical and overtake
the bulk still queued. The demo ends with a table per lane measured at the sink.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emailq.deployment import Deployment
from emailq.lanes import LANE_ORDER, Lane
from emailq.percentiles import percentile
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.settings import BrokerSettings, Settings, redact_url
from emailq.sink import SmtpSink
from emailq.worker import Worker


@dataclass(frozen=True, slots=True)
class DemoPlan:
    weddings: int = 3
    guests: int = 500  # invitations per wedding
    vendors: int = 40  # people the ceremony change must reach


@dataclass
class Ledger:
    """What the demo queued, to match against what the sink received."""

    lane_of: dict[str, Lane] = field(default_factory=dict)
    queued_at: dict[str, float] = field(default_factory=dict)
    label_of: dict[str, str] = field(default_factory=dict)

    def add(self, ids: list[str], lanes: list[Lane], at: float, label: str) -> None:
        for message_id, lane in zip(ids, lanes, strict=True):
            self.lane_of[message_id] = lane
            self.queued_at[message_id] = at
            self.label_of[message_id] = label


def wedding_emails(
    plan: DemoPlan, now: datetime, kind: str, wedding: int
) -> Iterator[dict[str, Any]]:
    """The emails of one kind for one wedding, as an application would submit them."""
    ceremony = (now + timedelta(days=(0, 5, 60)[wedding % 3], hours=3)).isoformat()
    count = plan.guests if kind == "invitation" else plan.vendors
    couple = ("Ana & Ben", "Chloe & Dev", "Eli & Faye")[wedding % 3]
    for n in range(count):
        yield {
            "from": {"email": "hello@weddings.example", "name": f"{couple} via emailq"},
            "to": [{"email": f"guest{n}@w{wedding}.example", "name": f"Guest {n}"}],
            "subject": f"{couple}: {kind.replace('_', ' ')}",
            "text": f"Dear guest {n},\n\nNews about the wedding of {couple}.\n" * 8,
            "html": f"<p>Dear guest {n},</p><p>News about the wedding of {couple}.</p>" * 8,
            "tenant": "weddings",
            "idempotency_key": f"w{wedding}-{kind}-{n}",
            "wedding": {"wedding_id": f"w{wedding}", "ceremony_at": ceremony, "kind": kind},
        }


def submit(
    deployment: Deployment, ledger: Ledger, plan: DemoPlan, kind: str, weddings: range
) -> int:
    """Queue the emails as an application embedding emailq would: validated, placed by the
    lane policy, keyed for idempotency."""
    now = datetime.now(UTC)
    emails = [d for w in weddings for d in wedding_emails(plan, now, kind, w)]
    at = time.time()
    queued = deployment.send_many(emails)
    ledger.add([q.id for q in queued], [Lane(q.lane) for q in queued], at, kind)
    return len(queued)


async def run_demo(plan: DemoPlan, deployment: Deployment, console: Console) -> tuple[Table, str]:
    ledger = Ledger()
    with SmtpSink() as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=4))
        express = SmtpProvider(SmtpSettings(port=sink.port, pool_size=2))
        worker = Worker(
            deployment.broker, provider, deployment.worker_settings(), express_provider=express
        )
        stop = asyncio.Event()
        total = submit(deployment, ledger, plan, "invitation", range(plan.weddings))
        console.print(f"queued {total} invitations for {plan.weddings} weddings (bulk lane)")
        running = asyncio.create_task(worker.run(stop))
        with _progress(console) as progress:
            bars = {lane: progress.add_task(lane.value, total=0) for lane in LANE_ORDER}
            await _wait_until(lambda: sink.count >= total // 5, progress, bars, ledger, sink)
            total += submit(deployment, ledger, plan, "vendor_update", range(1))
            total += submit(deployment, ledger, plan, "ceremony_change", range(1))
            progress.console.print(
                f"[bold red]ceremony change[/] for wedding w0 queued to {plan.vendors} people"
                f" with {total - sink.count - 2 * plan.vendors} invitations still ahead of it"
            )
            await _wait_until(lambda: sink.count >= total, progress, bars, ledger, sink)
        stop.set()
        await running
        await provider.close()
        await express.close()
        return _report(ledger, sink), _overtaking(ledger, sink)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


async def _wait_until(
    done: Any, progress: Progress, bars: dict[Lane, Any], ledger: Ledger, sink: SmtpSink
) -> None:
    deadline = time.monotonic() + 120
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's mail did not arrive within two minutes")
        _update(progress, bars, ledger, sink)
        await asyncio.sleep(0.1)
    _update(progress, bars, ledger, sink)


def _update(progress: Progress, bars: dict[Lane, Any], ledger: Ledger, sink: SmtpSink) -> None:
    queued = {lane: 0 for lane in LANE_ORDER}
    for lane in ledger.lane_of.values():
        queued[lane] += 1
    arrived = {lane: 0 for lane in LANE_ORDER}
    for delivery in list(sink.deliveries):
        if delivery.message_id in ledger.lane_of:
            arrived[ledger.lane_of[delivery.message_id]] += 1
    for lane, task in bars.items():
        progress.update(task, total=queued[lane], completed=arrived[lane])


def _report(ledger: Ledger, sink: SmtpSink) -> Table:
    latencies: dict[Lane, list[float]] = {lane: [] for lane in LANE_ORDER}
    for delivery in sink.deliveries:
        lane = ledger.lane_of.get(delivery.message_id)
        if lane:
            latencies[lane].append(delivery.received_at - ledger.queued_at[delivery.message_id])
    table = Table(title="emailq demo: delivered to the built-in SMTP sink")
    for column in ("lane", "queued", "delivered", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for lane in LANE_ORDER:
        queued = sum(1 for x in ledger.lane_of.values() if x is lane)
        if not queued:
            continue
        ms = sorted(x * 1000 for x in latencies[lane])
        table.add_row(
            lane.value, str(queued), str(len(ms)),
            f"{percentile(ms, 50):.0f}", f"{percentile(ms, 99):.0f}", f"{ms[-1]:.0f}",
        )  # fmt: skip
    return table


def _overtaking(ledger: Ledger, sink: SmtpSink) -> str:
    """How the critical mail fared against the bulk mail queued before it."""
    critical = [d for d in sink.deliveries if ledger.lane_of.get(d.message_id) is Lane.CRITICAL]
    if not critical:
        return "no critical mail was sent"
    queued_at = min(ledger.queued_at[d.message_id] for d in critical)
    last = max(d.received_at for d in critical)
    overtaken = sum(
        1
        for d in sink.deliveries
        if ledger.lane_of.get(d.message_id) is Lane.BULK
        and ledger.queued_at[d.message_id] < queued_at
        and d.received_at > last
    )
    return (
        f"ceremony change: all {len(critical)} critical emails arrived within"
        f" {(last - queued_at) * 1000:.0f} ms of being queued; they overtook {overtaken}"
        " invitations queued before them"
    )


def demo(plan: DemoPlan | None = None, broker_url: str | None = None) -> int:
    console = Console()
    plan = plan or DemoPlan()
    with tempfile.TemporaryDirectory(prefix="emailq-demo-") as tmp:
        url = broker_url or f"sqlite:///{Path(tmp) / 'queue.db'}"
        # The demo's own queue and sink: only the broker comes from outside.
        settings = Settings(broker=BrokerSettings(url=url))
        console.print(f"broker: {redact_url(url)}")
        with Deployment.from_settings(settings) as deployment:
            started = time.monotonic()
            table, overtaking = asyncio.run(run_demo(plan, deployment, console))
            console.print(table)
            console.print(overtaking)
            console.print(f"done in {time.monotonic() - started:.1f} s")
    return 0
