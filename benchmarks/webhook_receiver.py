"""What event webhooks cost mail delivery, and how far behind the mail their events arrive.

    .venv/bin/python benchmarks/e2e.py --webhooks 2 [--n 50000] [--backends redis]

benchmarks/e2e.py's emailq run (workers into Postfix's smtp-sink), without webhooks and
with one endpoint subscribed to every event type, interleaved off/on, on/off… (``--webhooks
ROUNDS`` rounds) so drift on a shared machine hits both alike. With webhooks an ``emailq
webhooks`` process (its own process, as in production) delivers to a local receiver (a
process too: emailq_loadtest/webhooks.py, HTTP/1.1 keep-alive, each signature verified)
while the workers drain the queue; after the drain it is given time to deliver every
``email.sent`` event. Printed: each run's drain rate, the mean of each mode and their
difference (the issue's target: within 10 %), and the event lag of ``email.sent`` (the
event's timestamp, when the worker settled the mail as sent → its arrival), p50/p99/max.
The webhook process's and the receiver's CPU are printed apart (the drain's CPU is the
workers'). ``EMAILQ_BENCH_WEBHOOKS_NICE=10`` runs ``emailq webhooks`` at that niceness, so
on a machine the workers keep busy it takes the CPU they leave. No figure is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emailq.deployment import Deployment
from emailq.percentiles import percentile
from emailq_loadtest.webhooks import WebhookLoad
from peers.harness import smtp_sink

TENANT = "default"  # the tenant e2e.py's mail is queued for
TARGET_COST = 0.10  # the issue: mail throughput within 10 % of no webhooks
NICE = int(os.environ.get("EMAILQ_BENCH_WEBHOOKS_NICE", "0"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WebhookRun:
    """One e2e run's webhook side: started once the queue's URL is known (before any mail
    is queued), finished after the drain (waits for every email.sent), closed always."""

    def __init__(self, expected_sent: int, log_dir: Path) -> None:
        self.expected_sent = expected_sent
        self.log_dir = log_dir
        self.deployment: Deployment | None = None
        self.load: WebhookLoad | None = None
        self.drained_at = 0.0
        self.caught_up_s: float | None = None  # drain end → last email.sent event
        self.cpu: dict[str, float] = {}
        self.lags: list[float] = []
        self.figures: dict[str, Any] = {}

    def start(self, broker_url: str) -> None:
        self.deployment = Deployment.from_url(broker_url)
        log = self.log_dir / "hooks.log"
        self.load = WebhookLoad(self.deployment, broker_url, TENANT, log, NICE)

    def finish(self) -> None:
        assert self.load is not None
        self.drained_at = time.monotonic()
        timeout = 120 + self.expected_sent / 200
        if self.load.wait_for_sent(self.expected_sent, timeout):
            self.caught_up_s = time.monotonic() - self.drained_at
        self.cpu = {name: cpu_s(pid) for name, pid in self.load.pids.items()}
        self.close()

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
            received = self.load.receiver.received
            self.lags = sorted(lag for kind, lag in received.lags.values() if kind == "email.sent")
            self.figures = self.load.figures(self.expected_sent)
            self.load = None
        if self.deployment is not None:
            self.deployment.close()
            self.deployment = None


RunEmailq = Callable[..., Any]  # e2e.run_emailq (passed in: e2e imports this module)


def compare(args: argparse.Namespace, run_emailq: RunEmailq, critical_n: int) -> int:
    backend = args.backends.split(",")[0]
    order: list[str] = []
    for round_ in range(args.webhooks):  # off on, on off, off on …
        order += ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
    drains: dict[str, list[float]] = {"off": [], "on": []}
    runs: list[WebhookRun] = []
    with smtp_sink() as port:
        print(f"emailq-{backend}, {args.n:,} bulk + {critical_n} critical emails per run, "
              f"{args.workers} workers, into smtp-sink on port {port}; emailq webhooks at nice "
              f"{NICE}", flush=True)  # fmt: skip
        for mode in order:
            with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
                hooks = WebhookRun(args.n + critical_n, Path(tmp)) if mode == "on" else None
                result = run_emailq(backend, args, port, Path(tmp), webhooks=hooks)
            if result.error or result.drain is None:
                sys.exit(f"webhooks {mode}: {result.error}")
            drains[mode].append(result.drain.per_minute)
            line = f"webhooks {mode:<3}: {result.drain.per_minute:>9,.0f} emails/min"
            if hooks:
                runs.append(hooks)
                line += "  " + describe(hooks)
            print(line, flush=True)
    off, on = statistics.mean(drains["off"]), statistics.mean(drains["on"])
    cost = (off - on) / off
    verdict = "met" if cost <= TARGET_COST else "BELOW"
    print(
        f"\nmean drain: without webhooks {off:,.0f}/min, with {on:,.0f}/min: webhooks cost "
        f"{cost * 100:+.1f} % of mail throughput (target: within {TARGET_COST:.0%}: {verdict})"
    )
    spread = max(drains["off"]) / min(drains["off"]) - 1
    print(f"run-to-run spread without webhooks: {spread * 100:.1f} %")
    lags = sorted(lag for run in runs for lag in run.lags)
    if lags:
        print(
            f"email.sent event lag over the {len(runs)} runs with webhooks ({len(lags):,} events):"
            f" p50 {percentile(lags, 50) * 1000:,.0f} ms, p99 {percentile(lags, 99) * 1000:,.0f}"
            f" ms, max {lags[-1] * 1000:,.0f} ms"
        )
    return 0 if all(run.caught_up_s is not None for run in runs) else 1


def describe(run: WebhookRun) -> str:
    f = run.figures
    lag = f["sent_lag_ms"]
    caught = f"{run.caught_up_s:.1f} s" if run.caught_up_s is not None else "NOT within timeout"
    cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu.items())
    return (
        f"{f['by_type'].get('email.sent', 0):,}/{run.expected_sent:,} email.sent events "
        f"({f['duplicates']} dup, {f['bad_signatures']} bad sig), lag p50 {lag['p50']:,.0f} ms "
        f"p99 {lag['p99']:,.0f} ms max {lag['max']:,.0f} ms, last event {caught} after the "
        f"drain; CPU s: {cpu}"
    )
