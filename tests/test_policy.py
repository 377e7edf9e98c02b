"""The lane policy: every kind placed, escalation toward the ceremony never goes down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailq.lanes import LANE_ORDER, Lane
from emailq.message import MessageKind
from emailq.policy import KIND_CLASS, Policy, place

NOW = datetime(2026, 6, 13, 13, 0, tzinfo=UTC)


def lane(kind: str, hours_ahead: float) -> Lane:
    return place(kind, NOW + timedelta(hours=hours_ahead), NOW).lane


def test_a_ceremony_change_on_the_day_is_critical() -> None:
    assert lane("ceremony_change", 3) is Lane.CRITICAL


def test_the_two_hour_window_escalates_vendor_coordination() -> None:
    assert lane("vendor_schedule_change", 3) is Lane.WEDDING_DAY
    assert lane("vendor_schedule_change", 1.5) is Lane.CRITICAL
    assert lane("vendor_schedule_change", 24 * 5) is Lane.PRE_WEDDING
    assert lane("vendor_schedule_change", 24 * 30) is Lane.STANDARD


def test_bulk_kinds_stay_bulk_and_unknown_context_is_standard() -> None:
    assert lane("invitation", 1) is Lane.BULK
    assert place("rsvp_reminder", None, NOW).lane is Lane.STANDARD
    assert place(None, None, NOW).lane is Lane.STANDARD


def test_an_explicit_priority_overrides() -> None:
    placement = place("newsletter", None, NOW, priority=95)
    assert (placement.lane, placement.priority) == (Lane.WEDDING_DAY, 95)


def test_the_wedding_is_over_twelve_hours_after_the_ceremony() -> None:
    assert lane("vendor_update", -11) is Lane.CRITICAL
    assert lane("vendor_update", -13) is Lane.STANDARD


@given(
    kind=st.sampled_from(sorted(KIND_CLASS)),
    later=st.floats(0, 24 * 90),
    sooner=st.floats(-12, 24 * 90),
)
def test_closer_to_the_ceremony_never_means_a_lower_lane(
    kind: str, later: float, sooner: float
) -> None:
    if sooner > later:
        later, sooner = sooner, later
    rank = LANE_ORDER.index
    assert rank(lane(kind, sooner)) <= rank(lane(kind, later))


@given(
    kind=st.sampled_from(sorted(KIND_CLASS)),
    ahead_minutes=st.integers(-24 * 60, 60 * 24 * 40),
    zone=st.sampled_from(
        ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
    ),
)
def test_the_same_instant_in_any_time_zone_gets_the_same_lane(
    kind: str, ahead_minutes: int, zone: str
) -> None:
    ceremony = NOW + timedelta(minutes=ahead_minutes)
    local = ceremony.astimezone(ZoneInfo(zone))
    assert place(kind, local, NOW).lane is place(kind, ceremony, NOW).lane


def test_the_ceremony_window_is_two_real_hours_across_a_dst_change() -> None:
    # 2026-03-29 in Paris: clocks jump from 02:00 to 03:00. A 03:30 ceremony is 1.5 real
    # hours after 01:00 local, though the wall clock says 2.5.
    paris = ZoneInfo("Europe/Paris")
    ceremony = datetime(2026, 3, 29, 3, 30, tzinfo=paris)
    before = datetime(2026, 3, 29, 1, 0, tzinfo=paris)
    assert place("vendor_update", ceremony, before).lane is Lane.CRITICAL
    # In autumn the hour repeats: 01:30 (first pass) to 03:00 is 2.5 real hours.
    autumn = datetime(2026, 10, 25, 3, 0, tzinfo=paris)
    first_pass = datetime(2026, 10, 25, 1, 30, tzinfo=paris)
    assert place("vendor_update", autumn, first_pass).lane is Lane.WEDDING_DAY


def test_every_documented_kind_has_a_class() -> None:
    assert set(MessageKind) == set(KIND_CLASS)


def test_the_policy_is_configurable_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'after_ceremony_hours = 2\n[kinds]\nnewsletter = "routine"\n'
        '[ladders]\nroutine = [[6, "wedding_day"], [48, "pre_wedding"]]\n'
    )
    policy = Policy.from_toml(path)
    assert (
        place("newsletter", NOW + timedelta(hours=5), NOW, policy=policy).lane is Lane.WEDDING_DAY
    )
    assert (
        place("newsletter", NOW + timedelta(hours=30), NOW, policy=policy).lane is Lane.PRE_WEDDING
    )
    assert place("newsletter", NOW - timedelta(hours=3), NOW, policy=policy).lane is Lane.STANDARD


def test_a_policy_file_cannot_make_closer_mean_lower(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[ladders]\nroutine = [[6, "pre_wedding"], [48, "wedding_day"]]\n')
    with pytest.raises(ValueError, match="highest lane down"):
        Policy.from_toml(path)


@pytest.mark.parametrize(
    "ceremony_at",
    [datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
     datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))],
)  # fmt: skip
def test_issue11_2_ceremonies_at_the_limits_of_datetime_do_not_overflow(
    ceremony_at: datetime,
) -> None:
    # The model refuses these; the policy stays total anyway: outside every window.
    assert place("ceremony_change", ceremony_at, NOW).lane is Lane.STANDARD
    assert place("invitation", ceremony_at, NOW).lane is Lane.BULK
