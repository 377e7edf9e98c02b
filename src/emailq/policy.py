"""Which lane an email belongs in, from its wedding context: pure functions, no I/O.

Each message kind belongs to a class; each class has a ladder of windows before the
ceremony. The closest window the ceremony falls in names the lane, so as the ceremony
approaches a message only ever moves up. Mail without wedding context goes to standard
(or bulk for bulk kinds). An explicit priority from a trusted caller overrides all of it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from emailq.lanes import LANE_ORDER, Lane

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


@dataclass(frozen=True, slots=True)
class Policy:
    """Which kinds are which class, and each class's ladder; loadable from a TOML file."""

    kinds: Mapping[str, KindClass] = field(default_factory=lambda: dict(KIND_CLASS))
    ladders: Mapping[KindClass, tuple[tuple[timedelta, Lane], ...]] = field(
        default_factory=lambda: dict(LADDERS)
    )
    after_ceremony: timedelta = AFTER_CEREMONY

    def __post_init__(self) -> None:
        for kind_class, ladder in self.ladders.items():
            windows = [window for window, _ in ladder]
            ranks = [LANE_ORDER.index(lane) for _, lane in ladder]
            # Closer to the ceremony must never mean a lower lane, whatever a file says.
            if windows != sorted(windows) or ranks != sorted(ranks):
                raise ValueError(
                    f"the {kind_class} ladder must go from the closest window to the farthest,"
                    " and from the highest lane down"
                )

    @classmethod
    def from_toml(cls, path: str | Path) -> Policy:
        """``[kinds]`` kind = "urgent" …; ``[ladders]`` urgent = [[hours, "lane"], …];
        ``after_ceremony_hours`` = 12. Missing parts keep their defaults."""
        data = tomllib.loads(Path(path).read_text())
        kinds = dict(KIND_CLASS) | {k: KindClass(v) for k, v in data.get("kinds", {}).items()}
        ladders = dict(LADDERS) | {
            KindClass(name): tuple((timedelta(hours=h), Lane(lane)) for h, lane in rungs)
            for name, rungs in data.get("ladders", {}).items()
        }
        hours = data.get("after_ceremony_hours", AFTER_CEREMONY / HOUR)
        return cls(kinds, ladders, timedelta(hours=hours))


DEFAULT_POLICY = Policy()


def place(
    kind: str | None,
    ceremony_at: datetime | None,
    now: datetime,
    priority: int | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Placement:
    """The lane for a message of ``kind`` for a ceremony at ``ceremony_at``, sent ``now``."""
    if priority is not None:
        lane = Lane.for_priority(priority)
        return Placement(lane, priority, LANE_OBJECTIVE_S[lane])
    kind_class = policy.kinds.get(kind or "other", KindClass.ROUTINE)
    lane = lane_for(kind_class, ceremony_at, now, policy)
    return Placement(lane, lane.priority, LANE_OBJECTIVE_S[lane])


def lane_for(
    kind_class: KindClass,
    ceremony_at: datetime | None,
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> Lane:
    """Instants, not calendar dates: a window is the same length across DST changes."""
    default = Lane.BULK if kind_class is KindClass.BULK else Lane.STANDARD
    if ceremony_at is None:
        return default
    # Subtracting two datetimes that share a ZoneInfo gives wall-clock time, wrong across
    # a DST change; in UTC the difference is the real one.
    try:
        ahead = ceremony_at.astimezone(UTC) - now.astimezone(UTC)
    except OverflowError:
        # Within a day of datetime's limits (year 1 or 9999): the ceremony is past or far
        # ahead, outside every window, either way.
        return default
    if ahead < -policy.after_ceremony:
        return default
    for window, lane in policy.ladders.get(kind_class, ()):
        if ahead <= window:
            return lane
    return default
