"""How a worker lives through a provider's trouble without burying mail.

:class:`ProviderPause`: when the provider refuses connections or credentials, nothing is
wrong with the mail. The worker stops sending for a while (1 s, 2 s, 4 s … up to a minute,
as Postfix backs off a dead destination), puts the batch back without spending attempts,
and tries again; one success ends the pause.

:class:`TransientTally`: transient failures are counted and logged, at most one line per
interval, so an outage is visible in the log without a line per message. Reasons are
logged with addresses masked.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable

from emailq.logs import mask_addresses

log = logging.getLogger(__name__)

_NUMBERS = re.compile(r"\d{4,}")  # counts, ids, ports; not SMTP codes such as 451 4.7.1


class ProviderPause:
    def __init__(
        self,
        name: str,
        base_s: float = 1.0,
        cap_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.base_s = base_s
        self.cap_s = cap_s
        self.clock = clock
        self.until = 0.0
        self.trips = 0  # in a row, without a success in between

    @property
    def remaining(self) -> float:
        return float(max(0.0, self.until - self.clock()))

    def trip(self, reason: str) -> float:
        """The provider is down: pause (longer each time in a row); returns the pause."""
        if self.remaining > 0:
            return self.remaining
        pause = min(self.cap_s, self.base_s * 2.0**self.trips)
        self.trips += 1
        self.until = self.clock() + pause
        log.warning("%s unavailable (%s); pausing its deliveries for %.0f s, no attempt spent",
                    self.name, mask_addresses(reason), pause)  # fmt: skip
        return pause

    def recovered(self) -> None:
        if self.trips:
            log.warning("%s delivers again after %d pause(s)", self.name, self.trips)
        self.trips = 0
        self.until = 0.0


class TransientTally:
    def __init__(
        self, name: str, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._since = -float("inf")  # the first failure is logged at once

    def add(self, reason: str) -> None:
        # Group by the reason's shape: codes and counts vary, the kind of failure does not.
        self.counts[_NUMBERS.sub("#", mask_addresses(reason))[:80]] += 1
        self.total += 1
        if self.clock() - self._since >= self.interval_s:
            self.report()

    def report(self) -> None:
        if not self.counts:
            return
        kinds = "; ".join(f"{n} × {kind}" for kind, n in self.counts.most_common(3))
        log.warning("%s: %d transient failures since the last report, to be retried: %s",
                    self.name, sum(self.counts.values()), kinds)  # fmt: skip
        self.counts.clear()
        self._since = self.clock()
