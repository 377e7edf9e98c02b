"""The lane policy: every kind placed, escalation toward the ceremony never goes down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from emailq.lanes import LANE_ORDER, Lane
from emailq.policy import KIND_CLASS, place

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
