"""How many workers the queue needs: a pure function of what was observed and the time.

For each lane, the work that must be done within its deadline is the mail here now (ready
and leased) plus the mail due within the look-ahead (scheduled and retrying), together
with that of every more urgent lane, which is leased before it. Clearing that backlog
within what is left of the deadline takes ``backlog / (rate per worker × time left)``
workers; keeping up with arrivals takes ``arrivals / rate per worker`` more. The lane that
needs the most sets the need.

Wedding mail also has a ceremony: each message still waiting should be out
``ceremony_margin_s`` before its ceremony. Taken soonest ceremony first (the ceremony's
deadline for all the mail of that ceremony and the ones before it), that asks for
``messages / (rate per worker × time left)`` workers, which grows as a ceremony nears:
the pool is added before the ceremony, not once its mail is late. Within
``ceremony_hold_s`` of a ceremony that still has mail waiting the pool does not shrink,
as in protected hours.

The weekly pattern and the season multiply the arrivals only: they are a forecast of what
is coming, and a quiet-hour multiplier must never let mail already queued miss its
deadline. The pool is sized at the need plus ``headroom`` (50 % by default: a load that
wobbles ±20 % then fits the pool it got without another step; 1.5 × 0.8 ≥ 1.2).

Changes (:func:`decide`): up at once, but not within ``up_cooldown_s`` of the last change;
down one step at a time, once demand has stayed lower for ``down_after_s`` and the last
change is ``down_cooldown_s`` old; never down in protected hours. An emergency (too much
queued, or a critical message past its deadline) goes to ``max_workers`` in one decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from emailq.autoscale.pattern import TrafficPattern
from emailq.lanes import LANE_ORDER, Lane

# A lane whose oldest mail is at or past its deadline still gets this long to catch up:
# the need is large, yet finite (and bounded by max_workers).
MIN_WINDOW_S = 5.0

DEFAULT_DEADLINES: dict[Lane, float] = {
    Lane.CRITICAL: 30.0,
    Lane.WEDDING_DAY: 120.0,
    Lane.PRE_WEDDING: 600.0,
    Lane.STANDARD: 900.0,
    Lane.BULK: 3600.0,
}


@dataclass(frozen=True, slots=True)
class LaneLoad:
    depth: int = 0  # ready and leased now
    oldest_age: float = 0.0  # seconds the oldest ready message has waited
    due_soon: int = 0  # scheduled and retrying, due within the look-ahead
    arrival_rate: float = 0.0  # emails/s enqueued lately


Ceremonies = tuple[tuple[float, int], ...]  # (ceremony, live wedding emails), soonest first


@dataclass(frozen=True, slots=True)
class Observation:
    lanes: Mapping[Lane, LaneLoad]
    workers: int  # the pool now
    rate_per_worker: float | None = None  # emails/s one worker delivered; None: not measured
    last_change_at: float = -math.inf
    low_since: float | None = None  # since when demand has been below the pool (Decision's)
    ceremonies: Ceremonies = ()  # ahead, with the wedding mail still waiting for each

    @property
    def queued(self) -> int:
        return sum(load.depth for load in self.lanes.values())


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    min_workers: int = 2
    max_workers: int = 20
    deadlines: Mapping[Lane, float] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    emergency_queued: int = 5000
    up_cooldown_s: float = 30.0
    down_after_s: float = 300.0
    down_cooldown_s: float = 600.0
    down_step: int = 1
    headroom: float = 0.5
    worker_rate: float = 400.0  # emails/s per worker until one is measured (here ~500)
    lookahead_s: float = 900.0
    pattern: TrafficPattern = field(default_factory=TrafficPattern)
    ceremony_margin_s: float = 600.0  # wedding mail should be out this long before its ceremony
    ceremony_horizon_s: float = 6 * 3600.0  # ceremonies this far ahead are looked at
    ceremony_hold_s: float = 1800.0  # no shrinking this close to a ceremony with mail waiting

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must be at least 1 and at most"
                f" max_workers ({self.max_workers})"
            )
        missing = [lane.value for lane in LANE_ORDER if lane not in self.deadlines]
        if missing:
            raise ValueError(f"deadlines must name every lane; missing {', '.join(missing)}")
        if self.worker_rate <= 0 or self.headroom < 0 or self.down_step < 1:
            raise ValueError("worker_rate must be > 0, headroom >= 0 and down_step >= 1")
        if min(self.ceremony_margin_s, self.ceremony_horizon_s, self.ceremony_hold_s) < 0:
            raise ValueError("ceremony_margin_s, ceremony_horizon_s and ceremony_hold_s >= 0")

    def bound(self, workers: int) -> int:
        return max(self.min_workers, min(self.max_workers, workers))


@dataclass(frozen=True, slots=True)
class Demand:
    need: float  # workers the load takes, before headroom and bounds
    workers: int  # the pool it asks for: need plus headroom, within min..max
    reason: str
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    workers: int
    reason: str
    demand: Demand
    low_since: float | None = None  # hand back in the next Observation
    direction: str = "hold"  # or "up", "down": against the pool it was decided for


def demand(observation: Observation, config: AutoscaleConfig, now: float) -> Demand:
    """The pool the load asks for now, with the reason, ignoring cooldowns."""
    emergency = _emergency(observation, config)
    if emergency:
        return Demand(math.inf, config.max_workers, emergency, emergency=True)
    rate = observation.rate_per_worker or config.worker_rate
    multiplier = config.pattern.multiplier(now)
    need, reason = 0.0, "no mail waiting or expected"
    backlog, arrivals = 0, 0.0
    for lane in LANE_ORDER:
        load = observation.lanes.get(lane, LaneLoad())
        backlog += load.depth + load.due_soon
        arrivals += load.arrival_rate
        deadline = config.deadlines[lane]
        window = max(MIN_WINDOW_S, deadline - load.oldest_age)
        lane_need = backlog / (rate * window) + arrivals * multiplier / rate
        if lane_need > need:
            need = lane_need
            reason = (
                f"{lane.value} lane: {backlog:,} queued or due within"
                f" {config.lookahead_s / 60:.0f} min (this lane and above), {window:.0f} s"
                f" left of its {deadline:.0f} s deadline, {arrivals:.1f}/s arriving"
                f" ×{multiplier:g}, {rate:.1f} emails/s per worker"
            )
    ceremony_need, ceremony_reason = _ceremony_need(observation.ceremonies, config, rate, now)
    if ceremony_need > need:
        need, reason = ceremony_need, ceremony_reason
    workers = config.bound(math.ceil(need * (1 + config.headroom) - 1e-9))
    return Demand(need, workers, f"{reason} → {workers} workers (need {need:.1f})")


def _ceremony_need(
    ceremonies: Ceremonies, config: AutoscaleConfig, rate: float, now: float
) -> tuple[float, str]:
    """Workers that get every ceremony's waiting mail out ``ceremony_margin_s`` before it,
    soonest ceremony first (so a ceremony's deadline covers the mail of those before it)."""
    need, reason, waiting = 0.0, "", 0
    for ceremony, emails in sorted(ceremonies):
        waiting += emails
        window = max(MIN_WINDOW_S, ceremony - config.ceremony_margin_s - now)
        ceremony_need = waiting / (rate * window)
        if ceremony_need > need:
            need = ceremony_need
            reason = (
                f"ceremony in {(ceremony - now) / 60:.0f} min: {waiting:,} wedding emails for it"
                f" (and sooner ones) to send {config.ceremony_margin_s / 60:.0f} min before it,"
                f" {window:.0f} s left, {rate:.1f} emails/s per worker"
            )
    return need, reason


def _ceremony_near(observation: Observation, config: AutoscaleConfig, now: float) -> str:
    """Why the pool must not shrink now because of a ceremony, or ""."""
    for ceremony, emails in observation.ceremonies:
        if emails and ceremony <= now + config.ceremony_hold_s:
            return f"a ceremony in {(ceremony - now) / 60:.0f} min has {emails:,} emails waiting"
    return ""


def _emergency(observation: Observation, config: AutoscaleConfig) -> str:
    queued = observation.queued
    if queued >= config.emergency_queued:
        return f"emergency: {queued:,} queued ≥ {config.emergency_queued:,}"
    critical = observation.lanes.get(Lane.CRITICAL, LaneLoad())
    deadline = config.deadlines[Lane.CRITICAL]
    if critical.depth and critical.oldest_age > deadline:
        return (
            f"emergency: a critical message has waited {critical.oldest_age:.0f} s,"
            f" past its {deadline:.0f} s deadline"
        )
    return ""


def decide(observation: Observation, config: AutoscaleConfig, now: float) -> Decision:
    """The pool size to have now: :func:`demand`, with the cooldowns and protected hours."""
    wanted = demand(observation, config, now)
    current = observation.workers
    since_change = now - observation.last_change_at
    if wanted.emergency or current < config.min_workers:
        return _change(current, config.bound(max(wanted.workers, current)), wanted, None)
    if current > config.max_workers:
        return _change(current, config.max_workers, wanted, None)
    if config.bound(math.ceil(wanted.need - 1e-9)) > current:  # the pool cannot keep up
        if since_change < config.up_cooldown_s:
            return _hold(current, wanted, f"cooling down ({since_change:.0f} s since a change)")
        return _change(current, wanted.workers, wanted, None)
    if wanted.workers >= current:
        return _hold(current, wanted, "the pool fits")
    low_since = now if observation.low_since is None else observation.low_since
    if config.pattern.is_protected(now):
        return _hold(current, wanted, "protected hours: not shrinking", low_since)
    if ceremony := _ceremony_near(observation, config, now):
        return _hold(current, wanted, f"{ceremony}: not shrinking", low_since)
    if now - low_since < config.down_after_s:
        waited = now - low_since
        return _hold(current, wanted, f"demand lower for {waited:.0f} s", low_since)
    if since_change < config.down_cooldown_s:
        return _hold(current, wanted, f"{since_change:.0f} s since a change", low_since)
    smaller = max(wanted.workers, current - config.down_step)
    return _change(current, smaller, wanted, now)  # the next step waits for demand again


def _hold(current: int, wanted: Demand, why: str, low_since: float | None = None) -> Decision:
    return Decision(current, f"holding {current}: {why}; {wanted.reason}", wanted, low_since)


def _change(current: int, workers: int, wanted: Demand, low_since: float | None) -> Decision:
    if workers == current:
        return _hold(current, wanted, "at its bound", low_since)
    direction = "up" if workers > current else "down"
    reason = f"scaling {direction} {current} → {workers}: {wanted.reason}"
    return Decision(workers, reason, wanted, low_since, direction)
