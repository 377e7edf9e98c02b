"""What each scenario offers: a rate, a duration, a traffic shape and a mix of wedding mail.

A scenario is a sequence of segments; each covers a share of the run at a multiple of the
scenario's rate with its own mix. A mix gives each kind of event its share of the
*messages*; an event is what an application submits at one instant (an invitation run to
200–500 guests, a vendor update to a handful of vendors). The lane each message lands in
is not chosen here: the generator sets the wedding context and emailq's own policy decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class EventKind:
    """One kind of submission: how many recipients, and when its ceremony is (hours from
    the moment it is sent; negative is past)."""

    kind: str  # the message kind emailq's policy reads (policy.KIND_CLASS)
    recipients: tuple[int, int]  # inclusive range per event
    ceremony_h: tuple[float, float] | None  # None: no wedding context
    subject: str

    @property
    def mean_size(self) -> float:
        return (self.recipients[0] + self.recipients[1]) / 2


DAY_H = 24.0
EVENT_KINDS: dict[str, EventKind] = {
    e.kind: e
    for e in (
        # bulk: a couple sends their invitations, months ahead
        EventKind("invitation", (200, 500), (60 * DAY_H, 240 * DAY_H), "You are invited"),
        # wedding_day when the wedding is tomorrow, pre_wedding when it is days away
        EventKind("rsvp_reminder", (20, 80), (12.0, 5 * DAY_H), "Please reply by tonight"),
        # today's weddings: wedding_day (critical inside the 2-hour ceremony window)
        EventKind("vendor_update", (3, 12), (2.5, 10.0), "Updated timeline for today"),
        EventKind("wedding_day_update", (30, 150), (2.5, 8.0), "Shuttles and parking today"),
        # critical: the ceremony moved, hours before it
        EventKind("ceremony_change", (20, 120), (0.5, 4.0), "The ceremony has moved"),
        # bulk, after the wedding
        EventKind("thank_you", (50, 200), (-10 * DAY_H, -1 * DAY_H), "Thank you for coming"),
        # standard: one-to-one transactional mail, weddings a month or more away
        EventKind("payment_reminder", (1, 1), (40 * DAY_H, 120 * DAY_H), "Your invoice"),
        EventKind("other", (1, 1), None, "Your account"),
    )
}

Mix = tuple[tuple[str, float], ...]  # (event kind, share of the messages); shares sum to 1


@dataclass(frozen=True, slots=True)
class Segment:
    label: str
    share: float  # of the run's duration
    multiplier: float  # of the scenario's rate
    mix: Mix


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    rate_per_min: float  # the nominal rate; segments offer multiples of it
    duration_s: float
    segments: tuple[Segment, ...]
    poisson: bool = True  # Poisson arrivals (else evenly spaced)
    step_rate_per_min: float = 0.0  # stress: each step adds this much
    step_s: float = 0.0  # stress: each step's length

    @property
    def is_ramp(self) -> bool:
        return self.step_rate_per_min > 0

    def windows(self) -> list[tuple[float, float, Segment]]:
        """(start, end, segment) in seconds from the start of the run."""
        out, start = [], 0.0
        for segment in self.segments:
            end = start + segment.share * self.duration_s
            out.append((start, end, segment))
            start = end
        return out

    def offered(self) -> float:
        """Messages the schedule offers in expectation."""
        return sum(
            (end - start) / MINUTE * self.rate_per_min * seg.multiplier
            for start, end, seg in self.windows()
        )

    def peak_rate_per_min(self) -> float:
        return self.rate_per_min * max(seg.multiplier for seg in self.segments)


# An ordinary weekday: mostly one-to-one mail and invitation runs, a little of everything.
WEEKDAY_MIX: Mix = (
    ("payment_reminder", 0.22),
    ("other", 0.10),
    ("invitation", 0.33),
    ("rsvp_reminder", 0.17),
    ("vendor_update", 0.06),
    ("wedding_day_update", 0.10),
    ("ceremony_change", 0.02),
)

# A wedding Saturday, 08:00 to 22:00, compressed into the run: (label, hours, rate ×, mix).
SATURDAY: tuple[tuple[str, float, float, Mix], ...] = (
    ("08:00 vendor coordination", 2, 0.8, (
        ("vendor_update", 0.35), ("wedding_day_update", 0.15), ("invitation", 0.30),
        ("rsvp_reminder", 0.15), ("thank_you", 0.04), ("ceremony_change", 0.01),
    )),
    ("10:00 late morning", 4, 1.0, (
        ("invitation", 0.50), ("rsvp_reminder", 0.20), ("vendor_update", 0.15),
        ("wedding_day_update", 0.10), ("thank_you", 0.04), ("ceremony_change", 0.01),
    )),
    ("14:00 getting ready", 2, 1.2, (
        ("invitation", 0.35), ("vendor_update", 0.25), ("wedding_day_update", 0.25),
        ("rsvp_reminder", 0.13), ("ceremony_change", 0.02),
    )),
    ("16:00 ceremony peak", 1, 2.0, (
        ("invitation", 0.45), ("wedding_day_update", 0.25), ("vendor_update", 0.15),
        ("rsvp_reminder", 0.12), ("ceremony_change", 0.03),
    )),
    ("17:00 reception", 3, 1.0, (
        ("invitation", 0.50), ("rsvp_reminder", 0.20), ("wedding_day_update", 0.15),
        ("thank_you", 0.10), ("vendor_update", 0.05),
    )),
    ("20:00 evening", 2, 0.6, (
        ("invitation", 0.45), ("thank_you", 0.35), ("rsvp_reminder", 0.15),
        ("wedding_day_update", 0.05),
    )),
)  # fmt: skip


def saturday_segments() -> tuple[Segment, ...]:
    total = sum(hours for _, hours, _, _ in SATURDAY)
    return tuple(Segment(label, hours / total, x, mix) for label, hours, x, mix in SATURDAY)


def flat(label: str) -> tuple[Segment, ...]:
    return (Segment(label, 1.0, 1.0, WEEKDAY_MIX),)


SCENARIOS: dict[str, Scenario] = {
    "standard": Scenario("standard", 10_000, 10 * MINUTE, flat("steady")),
    "wedding-day": Scenario("wedding-day", 15_000, 10 * MINUTE, saturday_segments()),
    "stress": Scenario(
        "stress", 20_000, 20 * 15.0, flat("step"), step_rate_per_min=10_000, step_s=15.0
    ),
    "endurance": Scenario("endurance", 10_000, 2 * 3600.0, flat("steady")),
}


def ramp(scenario: Scenario) -> Scenario:
    """A stress scenario's steps as segments: rate, rate + step, … for the whole duration."""
    steps = max(1, int(scenario.duration_s // scenario.step_s + 1e-9))
    base = scenario.rate_per_min
    segments = tuple(
        Segment(
            f"{base + k * scenario.step_rate_per_min:,.0f}/min",
            1 / steps,
            (base + k * scenario.step_rate_per_min) / base,
            scenario.segments[0].mix,
        )
        for k in range(steps)
    )
    return replace(scenario, segments=segments, duration_s=steps * scenario.step_s)


def resolve(
    name: str,
    duration_s: float | None = None,
    rate_per_min: float | None = None,
    step_rate_per_min: float | None = None,
    step_s: float | None = None,
) -> Scenario:
    """The named scenario with the caller's overrides; a stress scenario comes out as steps."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
    scenario = SCENARIOS[name]
    for value, what in ((duration_s, "duration"), (rate_per_min, "rate"),
                        (step_rate_per_min, "step rate"), (step_s, "step duration")):  # fmt: skip
        if value is not None and not value > 0:
            raise ValueError(f"the {what} must be positive")
    scenario = replace(
        scenario,
        duration_s=duration_s or scenario.duration_s,
        rate_per_min=rate_per_min or scenario.rate_per_min,
    )
    if scenario.is_ramp:
        step = step_s or min(scenario.step_s, scenario.duration_s)
        scenario = replace(
            scenario, step_s=step, step_rate_per_min=step_rate_per_min or scenario.step_rate_per_min
        )
        return ramp(scenario)
    return scenario


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``1h``, ``1h30m``, ``90`` (seconds) → seconds."""
    total, position = 0.0, 0
    while position < len(text):
        match = _DURATION.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"not a duration: {text!r} (try 30s, 2m or 1h)")
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    if not total > 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return total
