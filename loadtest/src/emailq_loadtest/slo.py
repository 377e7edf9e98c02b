"""SLO verdicts: each objective with its target, what was measured, and whether it held.

Defaults (every one configurable from the command line): the offered mail delivered in
time (≥ 95% of it by the end of the load plus a 2 s grace: sustained throughput at the
scenario's rate), success ≥ 99.9%, critical p99 ≤ 1 s and wedding_day p99 ≤ 5 s end to
end, no loss, no duplicates. A stress run judges each step on throughput and p99 only,
and passes when it held at least its starting rate without losing mail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from emailq.lanes import Lane
from emailq.policy import LANE_OBJECTIVE_S
from emailq_loadtest.measure import LatencySummary, WindowFigures


def _default_p99() -> dict[Lane, float]:
    return {lane: LANE_OBJECTIVE_S[lane] for lane in (Lane.CRITICAL, Lane.WEDDING_DAY)}


@dataclass(frozen=True, slots=True)
class SloConfig:
    throughput: float = 0.95  # share of the offered mail delivered in time
    grace_s: float = 2.0  # "in time": by the end of the load (or of the step) plus this
    success: float = 0.999  # delivered / sent, once the run has drained
    p99_s: Mapping[Lane, float] = field(default_factory=_default_p99)
    max_lost: int = 0
    max_duplicates: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    target: str
    actual: str
    ok: bool

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "target": self.target, "actual": self.actual, "ok": self.ok}


@dataclass(frozen=True, slots=True)
class Accounting:
    sent: int
    delivered: int
    duplicates: int

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    @property
    def success(self) -> float:
        return self.delivered / self.sent if self.sent else 1.0


def throughput_verdict(config: SloConfig, window: WindowFigures, rate_label: str) -> Verdict:
    """A window in which nothing was offered proves nothing, so it does not pass."""
    if not window.sent:
        return Verdict(f"sustained throughput at {rate_label}", "mail offered and delivered",
                       "nothing was offered", False)  # fmt: skip
    return Verdict(
        f"sustained throughput at {rate_label}",
        f"≥ {config.throughput:.1%} of the offered mail delivered within "
        f"{config.grace_s:g} s of the load's end",
        f"{window.held_ratio:.2%} ({window.delivered_in_time:,} of {window.sent:,})",
        window.held_ratio >= config.throughput,
    )


def latency_verdicts(
    config: SloConfig, lanes: Mapping[Lane, LatencySummary], sent: Mapping[Lane, int]
) -> list[Verdict]:
    verdicts = []
    for lane, limit in config.p99_s.items():
        summary = lanes[lane]
        name, target = f"{lane.value} p99", f"≤ {limit * 1000:,.0f} ms"
        if not sent.get(lane):
            verdicts.append(Verdict(name, target, "no mail in this lane", True))
        elif not summary.count:
            verdicts.append(Verdict(name, target, "nothing delivered", False))
        else:
            verdicts.append(
                Verdict(name, target, f"{summary.p99 * 1000:,.0f} ms", summary.p99 <= limit)
            )
    return verdicts


def delivery_verdicts(config: SloConfig, accounting: Accounting) -> list[Verdict]:
    return [
        Verdict("success rate", f"≥ {config.success:.1%}", f"{accounting.success:.3%}",
                accounting.success >= config.success),
        Verdict("no loss", f"≤ {config.max_lost:,} lost", f"{accounting.lost:,} lost",
                accounting.lost <= config.max_lost),
        Verdict("no duplicates", f"≤ {config.max_duplicates:,}",
                f"{accounting.duplicates:,}", accounting.duplicates <= config.max_duplicates),
    ]  # fmt: skip


def evaluate(
    config: SloConfig,
    window: WindowFigures,
    lanes: Mapping[Lane, LatencySummary],
    sent: Mapping[Lane, int],
    accounting: Accounting,
    rate_label: str,
) -> list[Verdict]:
    """A steady run's verdicts: throughput over the whole load, latency over every message."""
    return [
        throughput_verdict(config, window, rate_label),
        *latency_verdicts(config, lanes, sent),
        *delivery_verdicts(config, accounting),
    ]


def step_verdicts(config: SloConfig, window: WindowFigures, rate_label: str) -> list[Verdict]:
    """One stress step: did it deliver its own mail in time and fast enough?"""
    return [throughput_verdict(config, window, rate_label),
            *latency_verdicts(config, window.lanes, window.sent_by_lane)]  # fmt: skip


def stress_verdicts(
    config: SloConfig, held_per_min: float, start_per_min: float, accounting: Accounting
) -> list[Verdict]:
    return [
        Verdict("highest rate held", f"≥ {start_per_min:,.0f}/min (the first step)",
                f"{held_per_min:,.0f}/min", held_per_min >= start_per_min),
        *delivery_verdicts(config, accounting),
    ]  # fmt: skip


def passed(verdicts: Sequence[Verdict]) -> bool:
    return bool(verdicts) and all(v.ok for v in verdicts)
