"""What benchmarks/e2e.py prints: each run, then medians and ranges over the rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from critical import CRITICAL_AT, CRITICAL_N, Critical, p99
from peers.harness import Drain, Usage

DRAIN_TARGETS = {"redis": 100_000, "sqlite": 60_000}  # emailq's, emails/min
RSS_TARGET_MB = 150
CRITICAL_P99_TARGET_MS = 100  # issue 17: at the sink, while 100,000 bulk drain
AUTO = 0  # an SMTP pool without ?pool=: it sizes itself
RELAY_TARGET = 100_000  # emails/min the default pool should keep through a 5 ms relay


@dataclass
class Result:
    name: str  # the system: emailq-redis, emailq-sqlite, arq, celery
    label: str = ""  # the system and its pool when several pools are measured
    backend: str = ""  # emailq's broker ("" for a peer)
    pool: int = 0  # emailq's SMTP connections per provider (AUTO: no ?pool=, sized by itself)
    how: str = ""  # how the system ran, for the notes
    enqueue_per_s: float = 0.0
    drain: Drain | None = None
    usage: Usage = field(default_factory=Usage)
    critical: Critical | None = None
    peak_connections: int = 0  # established SMTP connections at the sink, most at once
    error: str | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def ok(self) -> bool:
        return self.drain is not None and not self.error

    @property
    def cpu_per_1k(self) -> float:
        return self.usage.cpu_s / self.drain.total * 1000 if self.drain else 0.0


def print_runs(results: Sequence[Result]) -> None:
    print(
        f"\n{'system':<22} {'enqueue/s':>10} {'drain emails/min':>17} {'CPU s/1k':>9} "
        f"{'peak RSS MB':>12} {'all procs MB':>13} {'start-up s':>11} {'SMTP conns':>11} "
        f"{'critical p50/p99 ms':>20}"
    )
    for r in results:
        if not r.ok or not r.drain:
            print(f"{r.label:<22} FAILED: {(r.error or 'no result').splitlines()[0]}")
            continue
        crit = ""
        if r.critical and r.critical.latencies_ms:
            ms = r.critical.latencies_ms
            crit = f"{statistics.median(ms):.0f} / {p99(r.critical):.0f}"
            crit += f" ({r.critical.missing} lost)" if r.critical.missing else ""
        print(
            f"{r.label:<22} {r.enqueue_per_s:>10,.0f} {r.drain.per_minute:>17,.0f} "
            f"{r.cpu_per_1k:>9.2f} {r.usage.largest_rss_mb:>12.0f} "
            f"{r.usage.total_rss_mb:>9.0f} ({r.usage.processes}) {r.drain.startup_s:>11.1f} "
            f"{r.peak_connections:>11} {crit:>20}"
        )


def spread(values: Sequence[float], fmt: str) -> str:
    """Median [min–max] of a figure over the rounds."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{fmt}} [{low:{fmt}}–{high:{fmt}}]"


def by_label(results: Sequence[Result]) -> dict[str, list[Result]]:
    grouped: dict[str, list[Result]] = {}
    for r in results:
        grouped.setdefault(r.label, []).append(r)
    return grouped


def figure(runs: Sequence[Result], of: Callable[[Result], float | None]) -> list[float]:
    return [value for r in runs if r.ok and (value := of(r)) is not None]


def critical_p99(r: Result) -> float | None:
    return p99(r.critical) if r.critical else None


def critical_p50(r: Result) -> float | None:
    if not r.critical or not r.critical.latencies_ms:
        return None
    return statistics.median(r.critical.latencies_ms)


def drain_rate(r: Result) -> float | None:
    return r.drain.per_minute if r.drain else None


def print_summary(results: Sequence[Result], rounds: int) -> None:
    print(
        f"\nOver {rounds} interleaved round(s): median [min–max]. Critical: {CRITICAL_N} "
        f"emails queued at once when ~{CRITICAL_AT:.0%} of the bulk was sent; latency = "
        "arrival at the sink − queued."
    )
    print(
        f"{'system':<22} {'runs':>5} {'bulk drain emails/min':>30} {'critical p50 ms':>22} "
        f"{'critical p99 ms':>22}"
    )
    for label, runs in by_label(results).items():
        good = [r for r in runs if r.ok]
        print(
            f"{label:<22} {len(good):>2}/{len(runs):<2} "
            f"{spread(figure(good, drain_rate), ',.0f'):>30} "
            f"{spread(figure(good, critical_p50), '.0f'):>22} "
            f"{spread(figure(good, critical_p99), '.0f'):>22}"
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "BELOW"


def print_targets(results: Sequence[Result], relay_ms: float) -> None:
    """emailq's targets, on the median of the rounds."""
    if not any(r.backend for r in results):
        return
    print("\nTargets (medians):")
    for label, runs in by_label(results).items():
        good = [r for r in runs if r.ok and r.backend]
        if not good:
            continue
        rate = statistics.median(figure(good, drain_rate))
        target = RELAY_TARGET if relay_ms else DRAIN_TARGETS[good[0].backend]
        print(f"  {label} drain >= {target:,}/min: {verdict(rate >= target)} ({rate:,.0f})")
        rss = statistics.median(r.usage.largest_rss_mb for r in good)
        print(f"  {label} worker peak RSS < {RSS_TARGET_MB} MB: {verdict(rss < RSS_TARGET_MB)} "
              f"({rss:.0f} MB)")  # fmt: skip
        if p99s := figure(good, critical_p99):
            p99_ms = statistics.median(p99s)
            print(
                f"  {label} critical p99 at the sink <= {CRITICAL_P99_TARGET_MS} ms: "
                f"{verdict(p99_ms <= CRITICAL_P99_TARGET_MS)} ({p99_ms:.0f} ms)"
            )


def pool_name(pool: int) -> str:
    return "auto" if pool == AUTO else str(pool)


def print_relay(results: Sequence[Result], relay_ms: float, default_pool: int) -> None:
    """Through a slow relay: the smallest pool that keeps RELAY_TARGET, per broker."""
    print(f"\nRelay mode: the sink waits {relay_ms:g} ms before every reply (~4 round trips "
          f"per email). emailq's default pool: {pool_name(default_pool)}.")  # fmt: skip
    backends: dict[str, list[tuple[int, float]]] = {}
    for runs in by_label(results).values():
        good = [r for r in runs if r.ok and r.backend]
        if good:
            rate = statistics.median(figure(good, drain_rate))
            backends.setdefault(good[0].backend, []).append((good[0].pool, rate))
    for backend, rates in backends.items():
        for pool, rate in sorted(rates):
            mark = " (default)" if pool == default_pool else ""
            print(f"  emailq-{backend} pool {pool_name(pool):>4}{mark}: {rate:>9,.0f} emails/min")
        enough = [pool_name(pool) for pool, rate in sorted(rates) if rate >= RELAY_TARGET]
        print(
            f"  emailq-{backend}: smallest measured pool keeping {RELAY_TARGET:,}/min: "
            f"{enough[0] if enough else 'none of those measured'}"
        )


def print_notes(results: Sequence[Result], n: int, peer_n: int, profiled: bool) -> None:
    print("\nHow each system ran:")
    for label, runs in by_label(results).items():
        print(f"  {label:<22} {runs[0].how or 'did not run'}")
    if any(r.backend for r in results):
        print(f"emailq delivers {n:,} bulk + {CRITICAL_N} critical emails per run.")
    if any(not r.backend for r in results):
        print(f"Each peer delivers {peer_n:,} bulk + {CRITICAL_N} critical emails per run.")
    print(
        "Drain, CPU s/1k and RSS include start-up (drain: workers' start to last delivery)."
        "\nPeak RSS: the largest worker process; all procs: every process of the workers at "
        "its own peak\n(how many processes). SMTP conns: most connections open at the sink "
        "at once.\nThe sink is benchmarks/sinkclock.c: every figure shares the machine with "
        "whatever else runs on it."
    )
    if profiled:
        print("This run was profiled: worker 0's figures include the profiler's overhead.")
    for r in results:
        if r.error:
            print(f"\n{r.label} FAILED:\n{r.error}")
