"""The autoscaler's policy: properties over any load, with a manual clock (no processes)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailq.autoscale.pattern import DEFAULT_PATTERN, DEFAULT_PROTECTED, TrafficPattern
from emailq.autoscale.policy import (
    AutoscaleConfig,
    Decision,
    LaneLoad,
    Observation,
    decide,
    demand,
)
from emailq.clock import ManualClock
from emailq.lanes import LANE_ORDER, Lane

TUESDAY_NOON = datetime(2026, 6, 9, 12, tzinfo=UTC).timestamp()
SATURDAY = datetime(2026, 6, 13, tzinfo=UTC).timestamp()
CONFIG = AutoscaleConfig()  # 2..20, no pattern
UNHURRIED = dataclasses.replace(CONFIG, emergency_queued=10**9)  # the emergency rule aside
WEDDINGS = dataclasses.replace(
    CONFIG, pattern=TrafficPattern.parse(DEFAULT_PATTERN, "5-10=1.5", DEFAULT_PROTECTED)
)

loads = st.builds(
    LaneLoad,
    depth=st.integers(0, 20_000),
    oldest_age=st.floats(0, 7200),
    due_soon=st.integers(0, 50_000),
    arrival_rate=st.floats(0, 2000),
)
ceremonies = st.lists(
    st.tuples(st.floats(SATURDAY - 3600, SATURDAY + 2 * 86400), st.integers(0, 20_000)),
    max_size=5,
).map(lambda found: tuple(sorted(found)))
observations = st.builds(
    Observation,
    lanes=st.dictionaries(st.sampled_from(LANE_ORDER), loads),
    workers=st.integers(0, 40),
    rate_per_worker=st.one_of(st.none(), st.floats(0.5, 2000)),
    last_change_at=st.floats(SATURDAY - 7200, SATURDAY + 86400),
    low_since=st.one_of(st.none(), st.floats(SATURDAY - 7200, SATURDAY + 86400)),
    ceremonies=ceremonies,
)
instants = st.floats(SATURDAY, SATURDAY + 86400)  # a whole Saturday: pattern, protected hours


@given(observations, instants)
def test_never_below_min_or_above_max(observation: Observation, now: float) -> None:
    decision = decide(observation, WEDDINGS, now)
    assert WEDDINGS.min_workers <= decision.workers <= WEDDINGS.max_workers
    assert decision.reason


@given(observations, instants)
def test_cooldowns_are_honoured(observation: Observation, now: float) -> None:
    decision = decide(observation, WEDDINGS, now)
    current, since_change = observation.workers, now - observation.last_change_at
    inside = WEDDINGS.min_workers <= current <= WEDDINGS.max_workers
    if not inside or decision.demand.emergency:
        return
    if decision.workers > current:
        assert since_change >= WEDDINGS.up_cooldown_s
    if decision.workers < current:
        assert since_change >= WEDDINGS.down_cooldown_s
        assert observation.low_since is not None
        assert now - observation.low_since >= WEDDINGS.down_after_s
        assert current - decision.workers <= WEDDINGS.down_step
        assert not WEDDINGS.pattern.is_protected(now)
        assert not any(
            n and at <= now + WEDDINGS.ceremony_hold_s for at, n in observation.ceremonies
        )


@given(observations, instants, st.integers(5000, 100_000), st.sampled_from(LANE_ORDER))
def test_an_emergency_reaches_max_in_one_decision(
    observation: Observation, now: float, queued: int, lane: Lane
) -> None:
    flooded = dataclasses.replace(observation, lanes={lane: LaneLoad(depth=queued)})
    assert decide(flooded, WEDDINGS, now).workers == WEDDINGS.max_workers
    late = {Lane.CRITICAL: LaneLoad(depth=1, oldest_age=WEDDINGS.deadlines[Lane.CRITICAL] + 1)}
    critical_late = dataclasses.replace(observation, lanes=late)
    decision = decide(critical_late, WEDDINGS, now)
    assert decision.workers == WEDDINGS.max_workers
    assert "critical message has waited" in decision.reason


@given(observations, instants, st.sampled_from(LANE_ORDER), st.integers(1, 10_000))
def test_more_mail_never_means_fewer_workers(
    observation: Observation, now: float, lane: Lane, more: int
) -> None:
    before = observation.lanes.get(lane, LaneLoad())
    deeper = dataclasses.replace(before, depth=before.depth + more)
    bigger = dataclasses.replace(observation, lanes={**observation.lanes, lane: deeper})
    assert decide(bigger, WEDDINGS, now).workers >= decide(observation, WEDDINGS, now).workers


@settings(max_examples=50, deadline=None)
@given(
    need=st.floats(0.5, 16),
    backlog_share=st.floats(0, 1),
    rate=st.floats(5, 500),
    start=st.integers(2, 20),
    noise=st.randoms(use_true_random=False),
)
def test_a_steady_load_with_20_percent_noise_changes_the_pool_at_most_once_per_10_minutes(
    need: float, backlog_share: float, rate: float, start: int, noise: random.Random
) -> None:
    clock = ManualClock(TUESDAY_NOON)
    deadline = CONFIG.deadlines[Lane.WEDDING_DAY]
    base_depth = need * backlog_share * rate * deadline  # workers' worth of backlog ...
    base_arrivals = need * (1 - backlog_share) * rate  # ... and of arrivals
    workers, last_change, low_since = start, -float("inf"), None
    changes: list[float] = []
    for _ in range(480):  # one decision every 15 s for 2 hours
        load = LaneLoad(
            depth=int(base_depth * noise.uniform(0.8, 1.2)),
            arrival_rate=base_arrivals * noise.uniform(0.8, 1.2),
        )
        observation = Observation(
            {Lane.WEDDING_DAY: load}, workers, rate, last_change_at=last_change,
            low_since=low_since,
        )  # fmt: skip
        decision = decide(observation, CONFIG, clock())
        if decision.workers != workers:
            changes.append(clock())
            workers, last_change = decision.workers, clock()
        low_since = decision.low_since
        clock.advance(15)
    gaps = [later - earlier for earlier, later in itertools.pairwise(changes)]
    assert all(gap >= 600 for gap in gaps), (changes, gaps)


@given(
    steady=st.integers(0, 500),
    burst=st.integers(0, 200_000),
    rate=st.floats(5, 500),
)
def test_a_burst_scheduled_10_minutes_ahead_raises_the_pool_before_it_arrives(
    steady: int, burst: int, rate: float
) -> None:
    now = TUESDAY_NOON
    calm = Observation({Lane.WEDDING_DAY: LaneLoad(depth=steady)}, 2, rate)
    coming = LaneLoad(depth=steady, due_soon=burst)  # observe() counts it 10 minutes ahead
    ahead = dataclasses.replace(calm, lanes={Lane.WEDDING_DAY: coming})
    before, after = decide(calm, CONFIG, now), decide(ahead, CONFIG, now)
    assert after.workers >= before.workers
    # more than the pool can clear within the lane's deadline: it grows now, not at arrival
    if steady + burst > before.workers * rate * CONFIG.deadlines[Lane.WEDDING_DAY]:
        assert after.workers > before.workers, after.reason


def test_a_decision_gives_its_reason_in_words() -> None:
    observation = Observation({Lane.CRITICAL: LaneLoad(depth=4000, oldest_age=10)}, 2, 12.0)
    decision = decide(observation, CONFIG, TUESDAY_NOON)
    assert decision.direction == "up"
    assert decision.reason.startswith("scaling up 2 → 20: critical lane: 4,000 queued")
    assert "20 s left of its 30 s deadline" in decision.reason
    assert "12.0 emails/s per worker" in decision.reason


def test_the_saturday_pattern_sizes_the_pool_for_the_evening_and_holds_it() -> None:
    load = Observation({Lane.STANDARD: LaneLoad(arrival_rate=100)}, 2, 50.0)
    at = {hour: SATURDAY + hour * 3600 for hour in (7, 13, 17)}
    in_june = {hour: demand(load, WEDDINGS, t).workers for hour, t in at.items()}
    # 100/s at 50/s per worker: 2 workers of need, ×0.1 / ×1.0 / ×2.0, ×1.5 in season, +50 %
    assert in_june == {7: 2, 13: 5, 17: 9}
    big = Observation({}, 9, 50.0, last_change_at=SATURDAY, low_since=SATURDAY)
    assert decide(big, WEDDINGS, at[17]).reason.startswith("holding 9: protected hours")
    assert decide(big, WEDDINGS, SATURDAY + 21 * 3600).workers == 8  # after 20:00: one step


def test_an_idle_queue_shrinks_one_step_after_5_minutes_of_lower_demand() -> None:
    clock = ManualClock(TUESDAY_NOON)
    idle = Observation({}, 6, 50.0, last_change_at=clock() - 3600)
    first = decide(idle, CONFIG, clock())
    assert (first.workers, first.low_since) == (6, clock())
    clock.advance(299)
    assert (
        decide(dataclasses.replace(idle, low_since=first.low_since), CONFIG, clock()).workers == 6
    )
    clock.advance(1)
    step: Decision = decide(dataclasses.replace(idle, low_since=first.low_since), CONFIG, clock())
    assert (step.workers, step.direction) == (5, "down")


def test_config_refuses_a_minimum_above_the_maximum() -> None:
    with pytest.raises(ValueError, match=r"min_workers \(5\) must be .* max_workers \(2\)"):
        AutoscaleConfig(min_workers=5, max_workers=2)


@given(observations, instants, st.floats(0, 6 * 3600), st.integers(1, 20_000))
def test_more_wedding_mail_or_a_nearer_ceremony_never_means_fewer_workers(
    observation: Observation, now: float, ahead: float, emails: int
) -> None:
    ceremony, others = now + ahead, observation.ceremonies

    def seen(*added: tuple[float, int]) -> Observation:
        return dataclasses.replace(observation, ceremonies=tuple(sorted(others + added)))

    one, more = seen((ceremony, emails)), seen((ceremony, emails + 1000))
    nearer = seen((ceremony - 600, emails))
    fewest = decide(one, WEDDINGS, now).workers
    assert decide(more, WEDDINGS, now).workers >= fewest
    assert decide(nearer, WEDDINGS, now).workers >= fewest
    assert decide(one, WEDDINGS, now).workers >= decide(observation, WEDDINGS, now).workers


@given(observations, st.floats(0, 3 * 3600), st.floats(0, 3 * 3600))
def test_the_need_for_a_ceremony_grows_as_it_nears(
    observation: Observation, earlier: float, later: float
) -> None:
    first, second = sorted((TUESDAY_NOON + earlier, TUESDAY_NOON + later))
    assert demand(observation, CONFIG, second).need >= demand(observation, CONFIG, first).need


def deliver_before_ceremony(
    emails: int, ceremony_in: float, rate: float, see_ceremonies: bool
) -> tuple[float | None, list[int]]:
    """Wedding mail queued in the bulk lane (an hour's deadline) for a ceremony sooner than
    that: decide every 15 s, deliver what the pool sends. When the last email went out
    (None: not before the ceremony), and the pool at each decision."""
    clock = ManualClock(TUESDAY_NOON)
    ceremony = clock() + ceremony_in
    workers, last_change, low_since = CONFIG.min_workers, -float("inf"), None
    pools: list[int] = []
    while clock() < ceremony:
        waiting = ((ceremony, emails),) if see_ceremonies and emails else ()
        observation = Observation(
            {Lane.BULK: LaneLoad(depth=emails)}, workers, rate, last_change, low_since, waiting
        )
        decision = decide(observation, UNHURRIED, clock())
        if decision.workers != workers:
            last_change = clock()
        workers, low_since = decision.workers, decision.low_since
        pools.append(workers)
        emails -= min(emails, int(workers * rate * 15))
        clock.advance(15)
        if not emails:
            return clock(), pools
    return None, pools


@settings(max_examples=60, deadline=None)
@given(
    ceremony_in=st.floats(15 * 60, 50 * 60),
    rate=st.floats(5, 200),
    load=st.floats(0.05, 0.9),
)
def test_wedding_mail_goes_out_before_its_ceremony_when_the_pool_can_carry_it(
    ceremony_in: float, rate: float, load: float
) -> None:
    margin = CONFIG.ceremony_margin_s
    # ``load`` of what the largest pool can send by the margin before the ceremony
    emails = max(1, int(load * CONFIG.max_workers * rate * (ceremony_in - margin)))
    done, pools = deliver_before_ceremony(emails, ceremony_in, rate, see_ceremonies=True)
    assert done is not None and done <= TUESDAY_NOON + ceremony_in - margin, pools
    needed = emails / (rate * (ceremony_in - margin))
    assert max(pools) >= min(CONFIG.max_workers, needed), pools


def test_without_the_ceremony_the_same_mail_would_be_late() -> None:
    # 40 minutes ahead, 120,000 emails at 20/s per worker: the bulk lane's hour alone asks
    # for 1.7 workers (+50 %: 3), which take 33 minutes: past the ceremony's 10-minute
    # margin. Out by then takes 3.3 workers (+50 %: 5), which take 20 minutes.
    blind, _ = deliver_before_ceremony(120_000, 40 * 60, 20.0, see_ceremonies=False)
    seen, pools = deliver_before_ceremony(120_000, 40 * 60, 20.0, see_ceremonies=True)
    assert blind is None or blind > TUESDAY_NOON + 30 * 60
    assert seen is not None and seen <= TUESDAY_NOON + 30 * 60
    assert pools[0] == 5
    waiting = Observation({}, 2, 20.0, ceremonies=((TUESDAY_NOON + 2400, 120_000),))
    reason = decide(waiting, UNHURRIED, TUESDAY_NOON).reason
    assert reason.startswith("scaling up 2 → 5: ceremony in 40 min: 120,000 wedding emails")


def test_the_pool_does_not_shrink_close_to_a_ceremony_with_mail_waiting() -> None:
    now = TUESDAY_NOON
    idle = Observation({}, 6, 50.0, last_change_at=now - 3600, low_since=now - 3600)
    assert decide(idle, CONFIG, now).workers == 5
    near = dataclasses.replace(idle, ceremonies=((now + 20 * 60, 3),))
    decision = decide(near, CONFIG, now)
    assert decision.workers == 6
    assert "a ceremony in 20 min has 3 emails waiting: not shrinking" in decision.reason
    far = dataclasses.replace(idle, ceremonies=((now + 45 * 60, 3),))
    assert decide(far, CONFIG, now).workers == 5
