"""The failover rules: down after N failed checks or a breaker trip, back after a healthy
period, the chain's order."""

from __future__ import annotations

import random

from emailq.failover.state import (
    FailoverPolicy,
    ProviderHealth,
    after_check,
    after_trip,
    send_order,
    statuses,
)

POLICY = FailoverPolicy(check_interval_s=1, fail_after=3, failback_s=5)


def checks(health: ProviderHealth, results: list[bool], start: float) -> ProviderHealth:
    for step, ok in enumerate(results):
        health = after_check(health, ok, start + step, POLICY, reason="" if ok else "refused")
    return health


def test_down_after_three_failed_checks_in_a_row_only() -> None:
    a = ProviderHealth("a")
    assert not checks(a, [False, False, True, False, False], 0).down
    down = checks(a, [False, False, False], 0)
    assert down.down and down.failures == 3 and down.reason == "refused"


def test_back_only_after_passing_checks_for_the_failback_period() -> None:
    down = checks(ProviderHealth("a"), [False] * 3, 0)
    recovering = checks(down, [True] * 5, 10)  # healthy from t=10 to t=14: 4 s
    assert recovering.down and recovering.healthy_since == 10
    assert not after_check(recovering, True, 15, POLICY).down
    # A failed check in between starts the period over.
    flapping = checks(down, [True, True, True, False, True, True, True], 10)
    assert flapping.down and flapping.healthy_since == 14


def test_a_breaker_trip_is_down_at_once_and_restarts_the_failback_period() -> None:
    healthy = checks(ProviderHealth("a"), [True, True], 0)
    tripped = after_trip(healthy, 2.0, "5 failures")
    assert tripped.down and tripped.healthy_since is None and tripped.changed_at == 2.0
    assert checks(tripped, [True] * 6, 3).down is False


def test_refused_credentials_are_down_on_the_first_check() -> None:
    refused = after_check(ProviderHealth("a"), False, 0, POLICY, "535", credentials_refused=True)
    assert refused.down and refused.credentials_refused


def test_the_chain_sends_through_the_first_provider_not_down() -> None:
    names = ["a", "b", "c"]
    down = ProviderHealth("a", down=True)
    assert send_order(names, {}) == [0, 1, 2]
    assert send_order(names, {"a": down}) == [1, 2]
    everything_down = {n: ProviderHealth(n, down=True) for n in names}
    assert send_order(names, everything_down) == [0, 1, 2]
    assert [s.state for s in statuses(names, {"a": down})] == ["down", "active", "standby"]


def test_a_provider_back_takes_a_growing_share_over_the_ramp() -> None:
    names = ["a", "b"]
    back = {"a": ProviderHealth("a", changed_at=100.0)}  # came back at 100
    draws = random.Random(13)

    def share_first(at: float) -> float:
        orders = [send_order(names, back, at, 60.0, draws.random) for _ in range(4000)]
        assert all(sorted(order) == [0, 1] for order in orders)  # the other is next, not gone
        return sum(order[0] == 0 for order in orders) / len(orders)

    assert share_first(100.0) == 0.0  # just back: the secondary still takes everything
    assert 0.2 < share_first(115.0) < 0.3  # a quarter of the way
    assert 0.7 < share_first(145.0) < 0.8
    assert share_first(160.0) == 1.0  # ramp over
    assert send_order(names, back, 115.0, 0.0, draws.random) == [0, 1]  # no ramp: at once
    assert send_order(names, back) == [0, 1]  # no clock: the goal


def test_a_record_survives_json() -> None:
    record = checks(ProviderHealth("smtp://a:25"), [False] * 3, 7)
    assert ProviderHealth.from_json(record.to_json()) == record
