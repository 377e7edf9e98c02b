"""Invariants of how a lease is shared between lanes (the pure function, and both brokers)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailq.broker import Broker, NewMessage
from emailq.lanes import DEFAULT_WEIGHTS, LANE_ORDER, SHARED_LANES, Lane, parse_weights
from emailq.scheduling import allot

ready_counts = st.fixed_dictionaries({lane: st.integers(0, 60) for lane in LANE_ORDER})
weights_st = st.fixed_dictionaries({lane: st.integers(1, 10) for lane in SHARED_LANES})


@given(n=st.integers(1, 120), ready=ready_counts, weights=weights_st)
def test_allot_takes_critical_first_and_fills_what_it_can(
    n: int, ready: dict[Lane, int], weights: dict[Lane, int]
) -> None:
    take = allot(n, ready, weights, {})
    assert take[Lane.CRITICAL] == min(n, ready[Lane.CRITICAL])
    assert all(0 <= take[lane] <= ready[lane] for lane in LANE_ORDER)
    assert sum(take.values()) == min(n, sum(ready.values()))


@given(weights=weights_st, rounds=st.integers(1, 40))
def test_allot_shares_saturated_lanes_by_weight(weights: dict[Lane, int], rounds: int) -> None:
    credit: dict[Lane, int] = {}
    total = sum(weights.values())
    taken = dict.fromkeys(SHARED_LANES, 0)
    ready = {lane: 10**6 for lane in SHARED_LANES}
    for _ in range(rounds):
        for lane, n in allot(total, ready, weights, credit).items():
            if lane in taken:
                taken[lane] += n
    # Smooth weighted round robin is exact over every full cycle of the weights.
    assert taken == {lane: weights[lane] * rounds for lane in SHARED_LANES}


@given(weights=weights_st, slots=st.integers(1, 200))
def test_allot_never_starves_a_lane_with_ready_mail(weights: dict[Lane, int], slots: int) -> None:
    credit: dict[Lane, int] = {}
    ready = {lane: 10**6 for lane in SHARED_LANES}
    seen = dict.fromkeys(SHARED_LANES, 0)
    for _ in range(slots):
        for lane, n in allot(1, ready, weights, credit).items():
            if lane in seen:
                seen[lane] += n
    cycle = sum(weights.values())
    for lane in SHARED_LANES:  # within any stretch of a full cycle, every lane gets its share
        assert seen[lane] >= (slots // cycle) * weights[lane]


def test_parse_weights() -> None:
    assert parse_weights("8:4:2:1") == DEFAULT_WEIGHTS
    with pytest.raises(ValueError, match="4 whole numbers"):
        parse_weights("8:4:2")
    with pytest.raises(ValueError, match="at least 1"):
        parse_weights("8:4:2:0")


def test_lane_for_priority() -> None:
    assert Lane.for_priority(100) is Lane.CRITICAL
    assert Lane.for_priority(95) is Lane.WEDDING_DAY
    assert Lane.for_priority(50) is Lane.STANDARD
    assert Lane.for_priority(0) is Lane.BULK


# The test purges the broker (messages and lane credits) itself before each example.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ready=ready_counts, n=st.integers(1, 100))
def test_a_broker_lease_is_shared_as_allot_says(
    broker: Broker, ready: dict[Lane, int], n: int
) -> None:
    broker.purge()
    broker.enqueue_many(
        [NewMessage(b"m", lane=lane) for lane in LANE_ORDER for _ in range(ready[lane])]
    )
    jobs = broker.lease("w", n, 30)
    got = {lane: sum(job.lane == lane for job in jobs) for lane in LANE_ORDER}
    assert got == allot(n, ready, broker.options.lane_weights, {})
