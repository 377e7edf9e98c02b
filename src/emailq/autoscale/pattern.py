"""When wedding mail comes: a weekly traffic pattern, a season, and protected hours.

Written as text so that a setting, a flag or an environment variable can hold them:

- pattern: ``"sat 06:00=0.1, sat 12:00=1.0, sat 16:00=2.0, sat 20:00=1.2"``. Each point holds
  from its time until the next point of the same day; before a day's first point, and on a
  day without points, the multiplier is 1.
- season: ``"5-10=1.5"``: months 5 to 10 (May to October) ×1.5; ``"11-2=0.8"`` wraps.
- protected: ``"sat 14:00-20:00"``: hours in which the pool never shrinks.

Times are read in one time zone (``autoscale.timezone``): where the weddings are.
Every parse error names the part of the text that is wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_PATTERN = "sat 06:00=0.1, sat 12:00=1.0, sat 16:00=2.0, sat 20:00=1.2"
DEFAULT_SEASON = "5-10=1.5"
DEFAULT_PROTECTED = "sat 14:00-20:00"

_POINT = re.compile(r"(\w+)\s+(\d{1,2}):(\d{2})\s*=\s*(\S+)")
_WINDOW = re.compile(r"(\w+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_SEASON = re.compile(r"(\d{1,2})\s*-\s*(\d{1,2})\s*=\s*(\S+)")


@dataclass(frozen=True, slots=True)
class PatternPoint:
    weekday: int  # 0 = Monday, as datetime.weekday()
    minute: int  # of the day
    multiplier: float


@dataclass(frozen=True, slots=True)
class WeeklyPattern:
    points: tuple[PatternPoint, ...] = ()

    @classmethod
    def parse(cls, text: str) -> WeeklyPattern:
        points = []
        for part in _parts(text):
            match = _POINT.fullmatch(part)
            if not match:
                raise ValueError(f"pattern point {part!r} is not like 'sat 16:00=2.0'")
            day, hour, minute, factor = match.groups()
            points.append(
                PatternPoint(
                    _weekday(day, part), _minute_of_day(hour, minute, part), _factor(factor, part)
                )
            )
        return cls(tuple(points))

    def multiplier(self, at: datetime) -> float:
        minute = at.hour * 60 + at.minute
        today = [p for p in self.points if p.weekday == at.weekday() and p.minute <= minute]
        return max(today, key=lambda p: p.minute).multiplier if today else 1.0


@dataclass(frozen=True, slots=True)
class Season:
    months: frozenset[int] = frozenset()
    multiplier: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Season:
        text = text.strip()
        if not text:
            return cls()
        match = _SEASON.fullmatch(text)
        if not match:
            raise ValueError(f"season {text!r} is not like '5-10=1.5' (months 1-12)")
        first, last = (int(month) for month in match.groups()[:2])
        for month in (first, last):
            if not 1 <= month <= 12:
                raise ValueError(f"month {month} in season {text!r} is outside 1-12")
        if first <= last:
            months = set(range(first, last + 1))
        else:  # wraps the new year: 11-2 is November to February
            months = set(range(first, 13)) | set(range(1, last + 1))
        return cls(frozenset(months), _factor(match[3], text))

    def multiplier_at(self, at: datetime) -> float:
        return self.multiplier if at.month in self.months else 1.0


@dataclass(frozen=True, slots=True)
class ProtectedHours:
    windows: tuple[tuple[int, int, int], ...] = ()  # weekday, first minute, end minute

    @classmethod
    def parse(cls, text: str) -> ProtectedHours:
        windows = []
        for part in _parts(text):
            match = _WINDOW.fullmatch(part)
            if not match:
                raise ValueError(f"protected hours {part!r} are not like 'sat 14:00-20:00'")
            day, h1, m1, h2, m2 = match.groups()
            start, end = _minute_of_day(h1, m1, part), _minute_of_day(h2, m2, part)
            if end <= start:
                raise ValueError(f"protected hours {part!r} end before they start")
            windows.append((_weekday(day, part), start, end))
        return cls(tuple(windows))

    def contains(self, at: datetime) -> bool:
        minute = at.hour * 60 + at.minute
        return any(
            day == at.weekday() and start <= minute < end for day, start, end in self.windows
        )


@dataclass(frozen=True, slots=True)
class TrafficPattern:
    """The weekly pattern, the season and the protected hours, read in one time zone."""

    weekly: WeeklyPattern = field(default_factory=WeeklyPattern)
    season: Season = field(default_factory=Season)
    protected: ProtectedHours = field(default_factory=ProtectedHours)
    timezone: str = "UTC"

    @classmethod
    def parse(
        cls, weekly: str, season: str = "", protected: str = "", timezone: str = "UTC"
    ) -> TrafficPattern:
        zone(timezone)
        return cls(
            WeeklyPattern.parse(weekly), Season.parse(season), ProtectedHours.parse(protected),
            timezone,
        )  # fmt: skip

    def local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, zone(self.timezone))

    def multiplier(self, now: float) -> float:
        at = self.local(now)
        return self.weekly.multiplier(at) * self.season.multiplier_at(at)

    def is_protected(self, now: float) -> bool:
        return self.protected.contains(self.local(now))


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is not known (e.g. UTC, Europe/Paris)") from None


def _parts(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _weekday(day: str, part: str) -> int:
    key = day.lower()
    if key in DAYS:
        return DAYS.index(key)
    if key in _DAY_NAMES:
        return _DAY_NAMES.index(key)
    raise ValueError(f"day {day!r} in {part!r} is not one of {', '.join(DAYS)}")


def _minute_of_day(hour: str, minute: str, part: str) -> int:
    if not 0 <= int(hour) <= 23:
        raise ValueError(f"hour {hour} in {part!r} is outside 00-23")
    if not 0 <= int(minute) <= 59:
        raise ValueError(f"minute {minute} in {part!r} is outside 00-59")
    return int(hour) * 60 + int(minute)


def _factor(text: str, part: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"multiplier {text!r} in {part!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"multiplier {text} in {part!r} is negative or not finite")
    return value
