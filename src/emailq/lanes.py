"""Priority lanes: the order in which queued mail is leased."""

from enum import StrEnum


class Lane(StrEnum):
    CRITICAL = "critical"
    WEDDING_DAY = "wedding_day"
    PRE_WEDDING = "pre_wedding"
    STANDARD = "standard"
    BULK = "bulk"

    @property
    def priority(self) -> int:
        return PRIORITY[self]

    @classmethod
    def for_priority(cls, priority: int) -> "Lane":
        """The highest lane whose priority the given number reaches."""
        for lane in LANE_ORDER:
            if priority >= PRIORITY[lane]:
                return lane
        return cls.BULK


# Highest first: this is also the lease order.
LANE_ORDER: tuple[Lane, ...] = (
    Lane.CRITICAL,
    Lane.WEDDING_DAY,
    Lane.PRE_WEDDING,
    Lane.STANDARD,
    Lane.BULK,
)

PRIORITY: dict[Lane, int] = {
    Lane.CRITICAL: 100,
    Lane.WEDDING_DAY: 90,
    Lane.PRE_WEDDING: 70,
    Lane.STANDARD: 50,
    Lane.BULK: 10,
}

# Critical is always served first; the other lanes share what is left by these weights,
# so bulk keeps moving (1 slot in 15) even while standard mail is saturated.
DEFAULT_WEIGHTS: dict[Lane, int] = {
    Lane.WEDDING_DAY: 8,
    Lane.PRE_WEDDING: 4,
    Lane.STANDARD: 2,
    Lane.BULK: 1,
}

SHARED_LANES: tuple[Lane, ...] = LANE_ORDER[1:]


def parse_weights(text: str) -> dict[Lane, int]:
    """Parse ``"8:4:2:1"`` (wedding_day:pre_wedding:standard:bulk) into weights."""
    parts = text.split(":")
    if len(parts) != len(SHARED_LANES) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"lane weights must be {len(SHARED_LANES)} whole numbers like 8:4:2:1")
    weights = dict(zip(SHARED_LANES, (int(p) for p in parts), strict=True))
    if any(w < 1 for w in weights.values()):
        raise ValueError("every lane weight must be at least 1, or that lane would starve")
    return weights
