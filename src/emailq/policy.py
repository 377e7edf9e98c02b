"""Which lane an email belongs in, from its wedding context: pure functions, no I/O.

Each message kind belongs to a class; each class has a ladder of windows before the
ceremony. The closest window the ceremony falls in names the lane, so as the ceremony
approaches a message only ever moves up. Mail without wedding context goes to standard
(or bulk for bulk kinds). An explicit priority from a trusted caller overrides all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from emailq.lanes import Lane

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# How soon each lane should deliver (seconds); monitoring and the autoscaler read these.
LANE_OBJECTIVE_S: dict[Lane, float] = {
    Lane.CRITICAL: 1.0,
    Lane.WEDDING_DAY: 5.0,
    Lane.PRE_WEDDING: 60.0,
    Lane.STANDARD: 300.0,
    Lane.BULK: 3600.0,
}


class KindClass(StrEnum):
    URGENT = "urgent"  # changes guests and vendors must act on now
    TIME_SENSITIVE = "time_sensitive"  # coordination that matters more as the day nears
    ROUTINE = "routine"
    BULK = "bulk"  # invitations, newsletters: large runs that may wait


KIND_CLASS: dict[str, KindClass] = {
    "ceremony_change": KindClass.URGENT,
    "weather_alert": KindClass.URGENT,
    "venue_change": KindClass.URGENT,
    "emergency": KindClass.URGENT,
    "vendor_schedule_change": KindClass.TIME_SENSITIVE,
    "wedding_day_update": KindClass.TIME_SENSITIVE,
    "vendor_update": KindClass.TIME_SENSITIVE,
    "seating_update": KindClass.TIME_SENSITIVE,
    "rsvp_reminder": KindClass.ROUTINE,
    "payment_reminder": KindClass.ROUTINE,
    "other": KindClass.ROUTINE,
    "invitation": KindClass.BULK,
    "save_the_date": KindClass.BULK,
    "thank_you": KindClass.BULK,
    "photo_gallery": KindClass.BULK,
    "newsletter": KindClass.BULK,
}

# (the ceremony is at most this far ahead, lane), closest window first. Until 12 hours after
# the ceremony the day still counts as the wedding day; after that the wedding is over.
LADDERS: dict[KindClass, tuple[tuple[timedelta, Lane], ...]] = {
    KindClass.URGENT: ((3 * DAY, Lane.CRITICAL), (30 * DAY, Lane.PRE_WEDDING)),
    KindClass.TIME_SENSITIVE: (
        (2 * HOUR, Lane.CRITICAL),  # the ceremony window escalates
        (DAY, Lane.WEDDING_DAY),
        (7 * DAY, Lane.PRE_WEDDING),
    ),
    KindClass.ROUTINE: ((DAY, Lane.WEDDING_DAY), (7 * DAY, Lane.PRE_WEDDING)),
    KindClass.BULK: (),
}
AFTER_CEREMONY = 12 * HOUR


@dataclass(frozen=True, slots=True)
class Placement:
    lane: Lane
    priority: int
    objective_s: float  # the lane's delivery objective


def place(
    kind: str | None,
    ceremony_at: datetime | None,
    now: datetime,
    priority: int | None = None,
) -> Placement:
    """The lane for a message of ``kind`` for a ceremony at ``ceremony_at``, sent ``now``."""
    if priority is not None:
        lane = Lane.for_priority(priority)
        return Placement(lane, priority, LANE_OBJECTIVE_S[lane])
    lane = lane_for(KIND_CLASS.get(kind or "other", KindClass.ROUTINE), ceremony_at, now)
    return Placement(lane, lane.priority, LANE_OBJECTIVE_S[lane])


def lane_for(kind_class: KindClass, ceremony_at: datetime | None, now: datetime) -> Lane:
    default = Lane.BULK if kind_class is KindClass.BULK else Lane.STANDARD
    if ceremony_at is None:
        return default
    ahead = ceremony_at - now
    if ahead < -AFTER_CEREMONY:
        return default
    for window, lane in LADDERS[kind_class]:
        if ahead <= window:
            return lane
    return default
