"""One load-test run: start (or reach) the service, feed it open-loop, watch, drain, judge, report.

Embedded (the default): a broker (a SQLite file in a temp dir, or ``--broker-url``),
``emailq worker`` processes and built-in SMTP sink processes, all started here and all
stopped on the way out. ``--target``: a running API fed over HTTP; its workers must
deliver to the sink this run opens on ``--sink-port``, the only place delivery is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from rich.console import Console
from rich.live import Live

from emailq.broker import Broker, NewMessage, State
from emailq.broker.base import LIVE_STATES
from emailq.client import AsyncClient, Client
from emailq.clock import now
from emailq.deployment import Deployment
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq_loadtest import report
from emailq_loadtest.autoscaled import PoolWatch
from emailq_loadtest.generator import TENANT, BrokerFeeder, HttpFeeder
from emailq_loadtest.live import render
from emailq_loadtest.measure import Ledger, ResourceLog
from emailq_loadtest.outage import FAILOVER_ENV, ProviderOutage
from emailq_loadtest.scenarios import Scenario
from emailq_loadtest.service import Receipts, SinkPool, WorkerFlags, WorkerPool, sink_ports
from emailq_loadtest.slo import (
    Accounting,
    SloConfig,
    Verdict,
    evaluate,
    passed,
    step_verdicts,
    stress_verdicts,
)
from emailq_loadtest.webhooks import WebhookLoad

SINK_CAPACITY_PER_MIN = 40_000  # what one aiosmtpd sink process is trusted to take
CHECK_LIMIT = 20_000  # lost ids looked up one by one in the broker
WARMUP_TIMEOUT_S = 60.0
WARMUP_SETTLE_S = 1.0
WEBHOOK_CATCH_UP_S = 60.0  # after the drain, for the last email.sent events to arrive


@dataclass(frozen=True, slots=True)
class Options:
    scenario: Scenario
    slo: SloConfig = field(default_factory=SloConfig)
    report_dir: Path = Path("loadtest-report")
    target: str | None = None
    api_key: str | None = None
    sink_port: int | None = None
    broker_url: str | None = None
    workers: int = 2
    autoscale: tuple[int, int] | None = None  # MIN, MAX: the pool sized by the autoscaler
    sinks: int | None = None  # None: one per 40,000/min of peak rate, at most one per worker
    sink: str = "auto"  # "aiosmtpd" (the built-in sink), "lean" (leansink.py), or "auto"
    worker: WorkerFlags = field(default_factory=WorkerFlags)
    sink_delay: float = 0.0
    drain_s: float | None = None
    seed: int = 0
    live: bool | None = None  # None: when the console is a terminal
    fault: str | None = None  # "provider-outage" (embedded only)
    fault_at_s: float | None = None  # None: a third of the way into the load
    fault_for_s: float = 30.0
    webhooks: bool = False  # a local receiver for every event: event lag in the report

    @property
    def sink_kind(self) -> str:
        """auto: the built-in sink while it keeps up; above that the lean one, because on a
        small machine the built-in sink's CPU is taken from the workers under test."""
        if self.sink != "auto":
            return self.sink
        peak = self.scenario.peak_rate_per_min()
        return "aiosmtpd" if peak <= SINK_CAPACITY_PER_MIN else "lean"

    @property
    def drain_timeout(self) -> float:
        return (
            self.drain_s
            if self.drain_s is not None
            else min(600.0, 30 + 0.25 * self.scenario.duration_s)
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    figures: dict[str, Any]
    json_path: Path
    html_path: Path

    @property
    def passed(self) -> bool:
        return bool(self.figures["passed"])


class Service(Protocol):
    description: dict[str, Any]
    errors: list[str]
    outage: ProviderOutage | None

    def warm_up(self) -> None: ...
    def pool(self) -> dict[str, Any] | None: ...
    def feed(self, start: float, stop: threading.Event) -> None: ...
    def pids(self) -> dict[str, int]: ...
    def check(self) -> None: ...
    def classify(self, ids: Sequence[str]) -> Counter[str]: ...
    def stop_delivery(self) -> None: ...
    def close(self) -> None: ...
    def webhook_figures(self) -> dict[str, Any] | None: ...


def wait_until(done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


def isolated_redis_url(url: str) -> str:
    """A Redis URL with a prefix of this run's own, unless the caller chose one."""
    parts = urlsplit(url)
    if parts.scheme.startswith("redis") and "prefix" not in parse_qs(parts.query):
        joiner = "&" if parts.query else "?"
        return f"{url}{joiner}prefix=emailq-loadtest-{uuid.uuid4().hex[:12]}"
    return url


def warmup_message(index: int) -> NewMessage:
    email = parse_email({"from": "warmup@loadtest.example", "to": f"w{index}@loadtest.example",
                         "subject": "warm-up", "text": "warm-up"})  # fmt: skip
    return NewMessage(email.to_payload(), lane=Lane.CRITICAL, validated=True)


class EmbeddedService:
    def __init__(self, options: Options, ledger: Ledger, tmp: Path) -> None:
        self.options, self.ledger = options, ledger
        url = options.broker_url or f"sqlite:///{tmp / 'queue.db'}"
        self.url = isolated_redis_url(url)
        self.deployment = Deployment.from_url(self.url)
        self.broker: Broker = self.deployment.broker
        peak = options.scenario.peak_rate_per_min()
        kind = options.sink_kind
        most = options.autoscale[1] if options.autoscale else options.workers
        count = options.sinks or min(most, 1 + int(peak // SINK_CAPACITY_PER_MIN))
        if kind == "lean" and not options.sinks:
            count = 1
        self.errors: list[str] = []
        ports = sink_ports(count)
        self.sinks = SinkPool(ports, ledger.deliver, options.sink_delay, kind)
        self.outage = self._outage(ports) if options.fault == "provider-outage" else None
        logs = options.report_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        first = options.autoscale[0] if options.autoscale else options.workers
        self.workers = WorkerPool(
            self.url, ports, first, options.worker, logs,
            backup_ports=self.outage.secondary.ports if self.outage else (),
            env=FAILOVER_ENV if self.outage else None,
        )  # fmt: skip
        self.watch = PoolWatch(self.workers, self.url, options.autoscale)
        pool = f"autoscaled {first}..{most}" if options.autoscale else options.workers
        self.description: dict[str, Any] = {
            "mode": "embedded", "broker": urlsplit(self.url).scheme,
            "workers": pool, "sinks": f"{count} × {kind}",
            "batch": options.worker.batch,
            "concurrency": options.worker.concurrency, "smtp_pool": options.worker.smtp_pool,
        }  # fmt: skip
        if options.worker.provider_rate:
            self.description["provider_rate_per_s"] = options.worker.provider_rate
        if options.sink_delay:
            self.description["sink_delay_s"] = options.sink_delay
        if self.outage:
            self.description["fault"] = self.outage.describe()
        self.hooks: WebhookLoad | None = None
        if options.webhooks:
            self.hooks = WebhookLoad(self.deployment, self.url, TENANT, logs / "webhooks.log")
            self.description["webhooks"] = "1 endpoint, every event, local receiver"

    def _outage(self, ports: list[int]) -> ProviderOutage:
        options = self.options
        at_s = options.fault_at_s
        if at_s is None:
            at_s = options.scenario.duration_s / 3

        def restart(deliver: Callable[[Receipts], None]) -> SinkPool:
            self.sinks = SinkPool(ports, deliver, options.sink_delay, self.sinks.kind)
            return self.sinks

        return ProviderOutage(self.sinks, self.ledger.deliver, restart, at_s, options.fault_for_s)

    def warm_up(self) -> None:
        """Wait until the workers deliver: warm-up emails (not measured) go through until one
        has reached the sink and a second has passed, in which the other workers come up
        (a worker starts in well under a second here)."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        first: float | None = None
        sent = 0
        while first is None or time.monotonic() < first + WARMUP_SETTLE_S:
            self.workers.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the workers delivered no warm-up email within 60 s")
            self.ledger.ignore(self.broker.enqueue_many([warmup_message(sent)]))
            sent += 1
            time.sleep(0.05)
            if first is None and self.ledger.warmup_seen:
                first = time.monotonic()

    def feed(self, start: float, stop: threading.Event) -> None:
        self.watch.begin(start)
        if self.outage:
            threading.Thread(target=self.outage.run, args=(start, stop), name="outage",
                             daemon=True).start()  # fmt: skip
        feeder = BrokerFeeder(self.broker, self.options.scenario, self.ledger,
                              seed=self.options.seed, stop=stop)  # fmt: skip
        feeder.run(start)

    def pool(self) -> dict[str, Any] | None:
        return self.watch.figures()

    def pids(self) -> dict[str, int]:
        pids = {f"worker-{i}": pid for i, pid in enumerate(self.workers.pids)}
        pids |= {f"sink-{i}": sink.pid for i, sink in enumerate(self.sinks.sinks)}
        if self.outage:
            pids |= {f"backup-sink-{i}": s.pid for i, s in enumerate(self.outage.secondary.sinks)}
        return pids | (self.hooks.pids if self.hooks else {})

    def check(self) -> None:
        self.workers.check()
        if self.hooks:
            self.hooks.check()

    def classify(self, ids: Sequence[str]) -> Counter[str]:
        found: Counter[str] = Counter()
        for message_id in ids:
            info = self.broker.get(message_id)
            if info is None:
                found["unknown to the broker"] += 1
            elif info.state in LIVE_STATES:
                found["late (still queued)"] += 1
            elif info.state is State.SENT:
                found["sent but not received"] += 1
            else:
                found[info.state.value] += 1
        return found

    def stop_delivery(self) -> None:
        """Sinks first: what has not arrived by now will not, and a worker stuck sending to
        a stalled sink gets a connection error (a retry) instead of holding the exit up.
        Webhooks before them: each delivered email's email.sent event is waited for."""
        self.watch.finish()
        self.errors += self.watch.errors
        if self.hooks:
            if not self.hooks.wait_for_sent(self.ledger.delivered, WEBHOOK_CATCH_UP_S):
                self.errors.append(
                    f"webhooks: not every email.sent event arrived within {WEBHOOK_CATCH_UP_S:.0f}"
                    " s of the drain"
                )
            self.hooks.stop()
        self.sinks.stop()
        if self.outage:
            self.outage.stop()
        self.workers.stop()

    def webhook_figures(self) -> dict[str, Any] | None:
        return self.hooks.figures(self.ledger.delivered) if self.hooks else None

    def close(self) -> None:
        if self.hooks:
            with contextlib.suppress(Exception):
                self.hooks.stop()
        with contextlib.suppress(Exception):
            self.watch.finish()
        with contextlib.suppress(Exception):
            self.sinks.stop()
        if self.outage:
            with contextlib.suppress(Exception):
                self.outage.stop()
        with contextlib.suppress(Exception):
            self.workers.stop()
        if urlsplit(self.url).scheme.startswith("redis"):
            self.broker.purge()
        self.deployment.close()


class TargetService:
    """A running API over HTTP; delivery is seen at the sink this run opens."""

    outage: ProviderOutage | None = None  # faults are the embedded service's

    def __init__(self, options: Options, ledger: Ledger) -> None:
        if not options.sink_port or not options.api_key:
            raise ValueError("--target needs --api-key and --sink-port (the target's workers "
                             "must deliver to smtp://<this host>:<sink-port>)")  # fmt: skip
        assert options.target
        self.options, self.ledger, self.target = options, ledger, options.target
        self.api_key: str = options.api_key
        self.sinks = SinkPool([options.sink_port], ledger.deliver, options.sink_delay,
                              options.sink_kind)  # fmt: skip
        self.description = {"mode": "target", "target": self.target,
                            "sink": f"{options.sink_kind} on port {options.sink_port}"}  # fmt: skip
        self.errors: list[str] = []

    def warm_up(self) -> None:
        with Client(self.target, self.api_key) as client:
            queued = client.send({"from": "warmup@loadtest.example", "to": "w0@loadtest.example",
                                  "subject": "warm-up", "text": "warm-up"})  # fmt: skip
        self.ledger.ignore([queued.id])
        wait_until(lambda: self.ledger.warmup_seen >= 1, WARMUP_TIMEOUT_S,
                   "delivery of a warm-up email to the sink")  # fmt: skip

    def feed(self, start: float, stop: threading.Event) -> None:
        async def go() -> None:
            async with AsyncClient(self.target, self.api_key, timeout=30) as client:
                feeder = HttpFeeder(client, self.options.scenario, self.ledger,
                                    seed=self.options.seed, stop=stop)  # fmt: skip
                await feeder.run(start)
                self.errors += feeder.errors

        asyncio.run(go())

    def pool(self) -> dict[str, Any] | None:
        return None  # the target's workers are its own

    def pids(self) -> dict[str, int]:
        return {"sink-0": self.sinks.sinks[0].pid}

    def check(self) -> None:
        return None

    def classify(self, ids: Sequence[str]) -> Counter[str]:
        found: Counter[str] = Counter()
        with Client(self.target, self.api_key) as client:
            for message_id in ids[:1000]:
                state = client.get(message_id)["state"]
                found["late (still queued)" if State(state) in LIVE_STATES else state] += 1
        if len(ids) > 1000:
            found["unchecked"] += len(ids) - 1000
        return found

    def stop_delivery(self) -> None:
        self.sinks.stop()

    def webhook_figures(self) -> dict[str, Any] | None:
        return None  # --webhooks needs the embedded service

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sinks.stop()


class Ramp:
    """A stress run's steps, each judged once its mail has had the grace period to arrive."""

    def __init__(self, scenario: Scenario, slo: SloConfig, ledger: Ledger) -> None:
        self.slo, self.ledger = slo, ledger
        self.windows = [(start, end, scenario.rate_per_min * seg.multiplier)
                        for start, end, seg in scenario.windows()]  # fmt: skip
        self.steps: list[report.StepResult] = []
        self.broken = False

    @property
    def held(self) -> float:
        ok = [step.rate_per_min for step in self.steps if step.ok]
        return max(ok) if ok and self.steps[0].ok else 0.0

    def poll(self, elapsed: float, final: bool = False) -> bool:
        """Judge the steps that are due; True once one has failed."""
        while not self.broken and len(self.steps) < len(self.windows):
            start, end, rate = self.windows[len(self.steps)]
            if elapsed < end + self.slo.grace_s and not final:
                break
            window = self.ledger.window(start, end, self.slo.grace_s)
            if final and not window.sent:
                break
            verdicts = step_verdicts(self.slo, window, f"{rate:,.0f}/min")
            p99 = {lane.value: round(s.p99 * 1000, 1)
                   for lane, s in window.lanes.items() if lane in self.slo.p99_s}  # fmt: skip
            self.steps.append(report.StepResult(rate, window.sent, window.held_ratio, p99,
                                                verdicts))  # fmt: skip
            self.broken = not passed(verdicts)
        return self.broken


@dataclass
class Runner:
    options: Options
    console: Console
    ledger: Ledger = field(default_factory=lambda: Ledger(now()))
    memory: ResourceLog = field(default_factory=ResourceLog)
    stop: threading.Event = field(default_factory=threading.Event)
    status: str = ""

    def run(self) -> RunResult:
        scenario = self.options.scenario
        ramp = Ramp(scenario, self.options.slo, self.ledger) if scenario.is_ramp else None
        with tempfile.TemporaryDirectory(prefix="emailq-loadtest-") as tmp:
            service = self._open(Path(tmp))
            try:
                service.warm_up()
                self._drive(service, ramp)
                service.stop_delivery()
                lost = self._lost(service)
            finally:
                self.stop.set()
                service.close()
        return self._report(service, ramp, lost)

    def _open(self, tmp: Path) -> Service:
        if self.options.target:
            return TargetService(self.options, self.ledger)
        return EmbeddedService(self.options, self.ledger, tmp)

    def _drive(self, service: Service, ramp: Ramp | None) -> None:
        start = now() + 0.2
        self.ledger.start = start
        failures: list[BaseException] = []

        def feed() -> None:
            try:
                service.feed(start, self.stop)
                # The load lasts the scenario's duration even when its last arrival is early.
                self.stop.wait(max(0.0, start + self.options.scenario.duration_s - now()))
            except BaseException as error:  # handed to the main thread, raised there
                failures.append(error)

        feeder = threading.Thread(target=feed, name="feeder")
        feeder.start()
        try:
            self._watch(service, ramp, feeder, failures, start)
        finally:
            self.stop.set()
            feeder.join()
        if ramp:
            ramp.poll(now() - start, final=True)

    def _watch(
        self,
        service: Service,
        ramp: Ramp | None,
        feeder: threading.Thread,
        failures: list[BaseException],
        start: float,
    ) -> None:
        pids = service.pids() | {"loadtest": os.getpid()}
        interval = max(1.0, self.options.scenario.duration_s / 600)
        with self._display() as show:
            last_sample = 0.0
            deadline = None
            while feeder.is_alive() or not self._drained(deadline):
                if deadline is None and not feeder.is_alive():
                    deadline = time.monotonic() + self.options.drain_timeout
                    self.status = "load done: waiting for the backlog to be delivered"
                feeder.join(0.25)
                if failures:
                    raise RuntimeError(f"the feeder failed: {failures[0]}") from failures[0]
                elapsed = now() - start
                if elapsed - last_sample >= interval:
                    self.memory.sample(elapsed, pids)
                    last_sample = elapsed
                    service.check()
                if ramp and ramp.poll(elapsed) and not self.stop.is_set():
                    self.stop.set()
                    self.status = f"step {ramp.steps[-1].rate_per_min:,.0f}/min broke an SLO"
                show(elapsed)
            self.memory.sample(now() - start, pids)

    def _drained(self, deadline: float | None) -> bool:
        accepted = self.ledger.sent - self.ledger.rejected
        return self.ledger.delivered >= accepted or (
            deadline is not None and time.monotonic() > deadline
        )

    @contextlib.contextmanager
    def _display(self) -> Iterator[Any]:
        scenario, slo = self.options.scenario, self.options.slo
        live = self.options.live if self.options.live is not None else self.console.is_terminal
        if live:
            view = render(self.ledger.live(now()), scenario, slo)
            with Live(view, console=self.console, refresh_per_second=4, transient=False) as lv:
                yield lambda _: lv.update(render(self.ledger.live(now()), scenario, slo,
                                                 self.status))  # fmt: skip
            return
        printed = [0.0]

        def line(elapsed: float) -> None:
            if elapsed - printed[0] >= 5:
                printed[0] = elapsed
                v = self.ledger.live(now())
                p99 = " ".join(f"{lane.value}={ms * 1000:.0f}ms"
                               for lane, ms in v.p99_by_lane.items() if ms)  # fmt: skip
                self.console.print(
                    f"{elapsed:6.0f} s  offered {v.offered_per_min:,.0f}/min  delivered "
                    f"{v.delivered_per_min:,.0f}/min  backlog {v.backlog:,}  p99 {p99}",
                    highlight=False,
                )

        yield line

    def _lost(self, service: Service) -> Counter[str]:
        pending = list(self.ledger.pending())
        lost = service.classify(pending[:CHECK_LIMIT])
        if len(pending) > CHECK_LIMIT:
            lost["unchecked"] += len(pending) - CHECK_LIMIT
        if self.ledger.rejected:
            lost["rejected by the API"] = self.ledger.rejected
        return lost

    def _report(self, service: Service, ramp: Ramp | None, lost: Counter[str]) -> RunResult:
        scenario, slo, ledger = self.options.scenario, self.options.slo, self.ledger
        accounting = Accounting(ledger.sent, ledger.delivered, ledger.duplicates)
        verdicts: list[Verdict]
        if ramp:
            verdicts = stress_verdicts(slo, ramp.held, scenario.rate_per_min, accounting)
        else:
            window = ledger.window(0.0, scenario.duration_s, slo.grace_s)
            sent = {lane: r.sent for lane, r in ledger.lanes.items()}
            verdicts = evaluate(slo, window, ledger.summaries(), sent, accounting,
                                f"{scenario.rate_per_min:,.0f}/min")  # fmt: skip
        figures = report.build(
            scenario=scenario, service=service.description, ledger=ledger,
            accounting=accounting, lost=lost, unexpected=ledger.unexpected(), slo=slo,
            verdicts=verdicts, memory=self.memory, steps=ramp.steps if ramp else (),
            held_per_min=ramp.held if ramp else None, broke=bool(ramp and ramp.broken),
            errors=service.errors, pool=service.pool(),
            webhooks=service.webhook_figures(),
        )  # fmt: skip
        if service.outage:
            figures["fault"] = service.outage.figures(ledger.start)
        json_path, html_path = report.write(figures, self.options.report_dir)
        return RunResult(figures, json_path, html_path)


def run(options: Options, console: Console | None = None) -> RunResult:
    return Runner(options, console or Console()).run()


def main(options: Options, console: Console | None = None) -> int:
    """Run, print the verdicts and where the report is; 0 only when every SLO held, 1 when
    one did not, 2 when the run could not be made."""
    console = console or Console()
    try:
        result = run(options, console)
    except RuntimeError as error:  # the service did not come up or died: no verdict
        console.print(f"[red]error[/]: {error}")
        return 2
    console.print(report.lanes_table(result.figures))
    console.print(report.console_table(result.figures))
    if pool := report.pool_summary(result.figures):
        console.print(pool, highlight=False)
    if hooks := result.figures.get("webhooks"):
        console.print(report.webhooks_line(hooks), highlight=False)
    stress = result.figures.get("stress")
    if stress:
        console.print(f"highest rate held: {stress['highest_rate_held_per_min'] or 0:,.0f}/min")
    # soft_wrap: a path must stay whole to be copied (and found by tests) on a narrow terminal
    console.print(f"report: {result.html_path} and {result.json_path}", soft_wrap=True)
    console.print("[green]PASS[/]" if result.passed else "[red]FAIL[/]: an SLO did not hold")
    return 0 if result.passed else 1
