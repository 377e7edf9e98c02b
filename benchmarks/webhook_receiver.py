"""What event webhooks cost mail delivery, and how far behind the mail their events arrive.

    .venv/bin/python benchmarks/e2e.py --webhooks 3 --n 20000 --backends redis \
        [--webhooks-base /tmp/emailq-base/src]

benchmarks/e2e.py's emailq run (workers into Postfix's smtp-sink), without webhooks
("off") and with one endpoint subscribed to every event type ("on"), interleaved (off on,
on off, … ``--webhooks ROUNDS`` rounds) so drift on a shared machine hits both alike.
``--webhooks-base SRC`` adds a third mode, "base": ``emailq webhooks`` run from another
tree's emailq (``PYTHONPATH=SRC``; the workers are this tree's), for before/after in the
same run. With webhooks an ``emailq webhooks`` process (its own process, as in production)
delivers to a local receiver (a process too: emailq_loadtest/webhooks.py, HTTP/1.1
keep-alive, each signature verified) while the workers drain the queue; after the drain it
is given time to deliver every ``email.sent`` event.

Printed per run: the drain rate, the workers' CPU s per 1,000 emails, and the event lag of
``email.sent`` (the event's timestamp, when the worker settled the mail as sent → its
arrival); per mode, the median and range of each, ``emailq webhooks``' CPU s per 1,000
events (from the end of its start-up), and the with/without ratios of mail throughput
(median over median; the issue's target: within 10 %) and of the workers' CPU per email
(steadier than wall-clock rates on a shared machine), with the event lag p50/p99/max.
``EMAILQ_BENCH_WEBHOOKS_NICE=19`` runs ``emailq webhooks`` and the receiver at that
niceness, so on a machine the workers keep busy they take the CPU the mail leaves (in
production the receiver is the application's, elsewhere). No figure is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from emailq.deployment import Deployment
from emailq.percentiles import percentile
from emailq_loadtest.webhooks import WebhookLoad
from peers.harness import smtp_sink

TENANT = "default"  # the tenant e2e.py's mail is queued for
TARGET_COST = 0.10  # the issue: mail throughput within 10 % of no webhooks
REDIS_URL = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")  # e2e's
NICE = int(os.environ.get("EMAILQ_BENCH_WEBHOOKS_NICE", "0"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WebhookRun:
    """One e2e run's webhook side: started once the queue's URL is known (before any mail
    is queued), finished after the drain (waits for every email.sent), closed always.
    ``src``: run ``emailq webhooks`` from that tree's emailq (``PYTHONPATH``)."""

    def __init__(self, expected_sent: int, log_dir: Path, src: str | None = None) -> None:
        self.expected_sent = expected_sent
        self.log_dir = log_dir
        self.src = src
        self.deployment: Deployment | None = None
        self.load: WebhookLoad | None = None
        self.drained_at = 0.0
        self.caught_up_s: float | None = None  # drain end → last email.sent event
        self.cpu: dict[str, float] = {}  # from start-up's end to the last email.sent
        self._cpu_at_start: dict[str, float] = {}
        self.lags: list[float] = []
        self.figures: dict[str, Any] = {}

    def start(self, broker_url: str) -> None:
        self.deployment = Deployment.from_url(broker_url)
        log = self.log_dir / "hooks.log"
        env = {"PYTHONPATH": self.src} if self.src else None
        self.load = WebhookLoad(self.deployment, broker_url, TENANT, log, NICE, env)
        if NICE:  # the receiver is the application's, on its own machine in production
            for pid in self.load.pids.values():
                renice(pid, NICE)
        deadline = time.monotonic() + 30  # its imports are not the cost of an event
        while b"delivering webhooks" not in log.read_bytes() and time.monotonic() < deadline:
            self.load.check()
            time.sleep(0.05)
        self._cpu_at_start = {name: cpu_s(pid) for name, pid in self.load.pids.items()}

    def finish(self) -> None:
        assert self.load is not None
        self.drained_at = time.monotonic()
        timeout = 120 + self.expected_sent / 200
        if self.load.wait_for_sent(self.expected_sent, timeout):
            self.caught_up_s = time.monotonic() - self.drained_at
        self.cpu = {
            name: cpu_s(pid) - self._cpu_at_start.get(name, 0.0)
            for name, pid in self.load.pids.items()
        }
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


@dataclass
class Mode:
    """Runs of one kind: no webhooks ("off"), this tree's ``emailq webhooks`` ("on"), or
    another tree's ("base", ``--webhooks-base``)."""

    name: str
    hooks: bool
    src: str | None = None
    drains: list[float] = field(default_factory=list)  # emails/min
    worker_cpu: list[float] = field(default_factory=list)  # the workers' CPU s per 1k emails
    redis_cpu: list[float] = field(default_factory=list)  # redis-server's, per 1k emails
    runs: list[WebhookRun] = field(default_factory=list)

    def hooks_cpu(self) -> list[float]:
        """``emailq webhooks``' CPU s per 1,000 emails (one email.sent event each)."""
        return [run.cpu.get("webhooks", 0.0) / run.expected_sent * 1000 for run in self.runs]

    def lags(self) -> list[float]:
        return sorted(lag for run in self.runs for lag in run.lags)


def compare(args: argparse.Namespace, run_emailq: RunEmailq, critical_n: int) -> int:
    backend = args.backends.split(",")[0]
    modes = [Mode("off", False), Mode("on", True)]
    if args.webhooks_base:
        modes.append(Mode("base", True, args.webhooks_base))
    order: list[Mode] = []
    for round_ in range(args.webhooks):  # off on base, on base off, base off on …
        shift = round_ % len(modes)
        order += modes[shift:] + modes[:shift]
    with smtp_sink() as port:
        print(f"emailq-{backend}, {args.n:,} bulk + {critical_n} critical emails per run, "
              f"{args.workers} workers, into smtp-sink on port {port}; emailq webhooks at nice "
              f"{NICE}; modes {', '.join(m.name for m in modes)}", flush=True)  # fmt: skip
        for mode in order:
            with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
                total = args.n + critical_n
                hooks = WebhookRun(total, Path(tmp), mode.src) if mode.hooks else None
                redis_before = redis_cpu_s(args)
                result = run_emailq(backend, args, port, Path(tmp), webhooks=hooks)
                mode.redis_cpu.append((redis_cpu_s(args) - redis_before) / total * 1000)
            if result.error or result.drain is None:
                sys.exit(f"webhooks {mode.name}: {result.error}")
            mode.drains.append(result.drain.per_minute)
            mode.worker_cpu.append(result.cpu_per_1k)
            line = (f"webhooks {mode.name:<4}: {result.drain.per_minute:>9,.0f} emails/min, "
                    f"workers {result.cpu_per_1k:.2f} CPU s/1k emails, "
                    f"redis-server {mode.redis_cpu[-1]:.3f}")  # fmt: skip
            if hooks:
                mode.runs.append(hooks)
                line += "  " + describe(hooks)
            print(line, flush=True)
    return summarize(modes)


def renice(pid: int, nice: int) -> None:
    """``nice`` for the process and, with Linux's autogroup scheduling on, for its session's
    group: there a niceness only ranks a process within its own session, and the webhook
    process and the receiver each lead one, so the mail workers would not be put first."""
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def redis_cpu_s(args: argparse.Namespace) -> float:
    """The Redis server's CPU seconds so far (shared: other clients' work counts too)."""
    if "redis" not in args.backends:
        return 0.0
    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def spread(values: list[float], digits: int = 0) -> str:
    """Median [min–max]."""
    return (f"{statistics.median(values):,.{digits}f} "
            f"[{min(values):,.{digits}f}–{max(values):,.{digits}f}]")  # fmt: skip


def summarize(modes: list[Mode]) -> int:
    """Medians and ranges per mode; with/without ratios; event lag; the issue's target."""
    off = modes[0]
    print(f"\nmedian [range] over {len(off.drains)} runs per mode:")
    for mode in modes:
        line = (f"  {mode.name:<4}: {spread(mode.drains)} emails/min, workers "
                f"{spread(mode.worker_cpu, 2)} CPU s/1k emails, redis-server "
                f"{spread(mode.redis_cpu, 3)}")  # fmt: skip
        if mode.hooks and (lags := mode.lags()):
            line += (f"; emailq webhooks {spread(mode.hooks_cpu(), 3)} CPU s/1k events; "
                     f"email.sent lag p50 {percentile(lags, 50) * 1000:,.0f} ms, "
                     f"p99 {percentile(lags, 99) * 1000:,.0f} ms, max {lags[-1] * 1000:,.0f} ms "
                     f"({len(lags):,} events)")  # fmt: skip
        print(line)
    base_off = statistics.median(off.drains)
    print(f"run-to-run spread without webhooks: {(max(off.drains) / min(off.drains) - 1):.1%}")
    for mode in modes[1:]:
        ratio = statistics.median(mode.drains) / base_off
        cpu = statistics.median(mode.worker_cpu) / statistics.median(off.worker_cpu)
        verdict = "met" if ratio >= 1 - TARGET_COST else "NOT met"
        print(f"with webhooks ({mode.name}) / without: mail throughput {ratio:.1%} (median over "
              f"median; target within {TARGET_COST:.0%}: {verdict}), workers' CPU per email "
              f"{cpu:.1%}; event lag p99 {percentile(mode.lags(), 99) * 1000:,.0f} ms")  # fmt: skip
    caught_up = all(run.caught_up_s is not None for mode in modes for run in mode.runs)
    return 0 if caught_up else 1


def describe(run: WebhookRun) -> str:
    f = run.figures
    lag = f["sent_lag_ms"]
    caught = f"{run.caught_up_s:.1f} s" if run.caught_up_s is not None else "NOT within timeout"
    cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu.items())
    return (
        f"{f['by_type'].get('email.sent', 0):,}/{run.expected_sent:,} email.sent events "
        f"({f['duplicates']} dup, {f['bad_signatures']} bad sig), lag p50 {lag['p50']:,.0f} ms "
        f"p99 {lag['p99']:,.0f} ms max {lag['max']:,.0f} ms, last event {caught} after the "
        f"drain; CPU s after start-up: {cpu}"
    )
