"""``--fault provider-outage``: the workers deliver through a chain of two sets of sinks,
and the primary set stops for a while in the middle of the load.

The workers check their providers every second and take a provider back after
``FAILBACK_S`` of passing checks, so both switches happen within a run. What the run
records, in seconds from the start of the load: when the primary stopped and came back,
when mail first reached the secondary, and when it first reached the primary again. The
report draws them on its plots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from emailq.clock import now
from emailq_loadtest.service import Receipts, SinkPool, sink_ports

FAULTS = ("provider-outage",)
FAILBACK_S = 5.0
# The workers' chain settings for this fault (environment, read by ``emailq worker``).
FAILOVER_ENV = {
    "EMAILQ_PROVIDER_CHECK_INTERVAL_S": "1",
    "EMAILQ_PROVIDER_FAILBACK_S": str(FAILBACK_S),
}
STOPPED, SWITCHED, BACK, RETURNED = (
    "primary stopped", "mail through the secondary", "primary back", "mail through the primary",
)  # fmt: skip


class ProviderOutage:
    def __init__(
        self,
        primary: SinkPool,
        deliver: Callable[[Receipts], None],
        restart: Callable[[Callable[[Receipts], None]], SinkPool],
        at_s: float,
        length_s: float,
    ) -> None:
        """``restart(deliver)``: opens the primary's sinks again on their ports."""
        self.primary = primary
        self.deliver = deliver
        self.restart = restart
        self.at_s, self.length_s = at_s, length_s
        self.events: dict[str, float] = {}  # epoch seconds
        self._lock = threading.Lock()
        self.secondary = SinkPool(sink_ports(len(primary.ports)), self._at_secondary,
                                  primary.delay, primary.kind)  # fmt: skip

    def _note(self, name: str, receipts: Receipts, after: str) -> None:
        with self._lock:
            if receipts and after in self.events and name not in self.events:
                self.events[name] = min(at for _, at in receipts)

    def _at_secondary(self, receipts: Receipts) -> None:
        self._note(SWITCHED, receipts, STOPPED)
        self.deliver(receipts)

    def at_primary(self, receipts: Receipts) -> None:
        self._note(RETURNED, receipts, BACK)
        self.deliver(receipts)

    def run(self, start: float, stop: threading.Event) -> None:
        """Stop the primary ``at_s`` into the load, and start it again ``length_s`` later."""
        if stop.wait(max(0.0, start + self.at_s - now())):
            return
        self.primary.stop()
        self.events[STOPPED] = now()
        if stop.wait(self.length_s):
            return
        self.primary = self.restart(self.at_primary)
        self.events[BACK] = now()

    def stop(self) -> None:
        self.primary.stop()
        self.secondary.stop()

    def describe(self) -> str:
        return f"provider-outage: primary sinks stopped {self.length_s:g} s at {self.at_s:g} s"

    def figures(self, start: float) -> dict[str, Any]:
        """For the report: the outage and the switches, in seconds from ``start``."""
        at = {name: round(t - start, 3) for name, t in sorted(self.events.items(),
                                                              key=lambda e: e[1])}  # fmt: skip
        return {
            "kind": "provider-outage",
            "outage_s": [round(self.at_s, 3), round(self.at_s + self.length_s, 3)],
            "events_s": at,
            "switch_after_s": _gap(at, STOPPED, SWITCHED),
            "failback_after_s": _gap(at, BACK, RETURNED),
        }


def _gap(at: dict[str, float], first: str, then: str) -> float | None:
    return round(at[then] - at[first], 3) if first in at and then in at else None
