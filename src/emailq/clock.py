"""The one place emailq reads the wall clock.

Everything that needs the time takes a ``Clock`` (a zero-argument callable returning
epoch seconds) and defaults to :func:`now`, so tests can inject a controllable clock
instead of sleeping.
"""

import time
from collections.abc import Callable

Clock = Callable[[], float]


def now() -> float:
    """Seconds since the epoch, as a float."""
    return time.time()


class ManualClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds
