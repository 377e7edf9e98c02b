"""A receiver that fails is paused, as a mail provider that is down is: while it is, its
deliveries wait without spending attempts, and one probe at a time finds out when it is
back. So a dead receiver costs one request per pause, not one per event and retry, and
the webhook process stays idle instead of competing with the mail workers for the CPU."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PAUSE_S = 60.0


@dataclass
class EndpointPauses:
    base_s: float = 1.0
    _until: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def held_until(self, endpoint_id: str, now: float) -> float | None:
        """When a paused endpoint may be tried again; None when it may be now."""
        until = self._until.get(endpoint_id, 0.0)
        return until if until > now else None

    def suspect(self, endpoint_id: str) -> bool:
        """Failed last time: try one delivery before sending it the rest."""
        return endpoint_id in self._failures

    def failed(self, endpoint_id: str, now: float) -> None:
        if self.held_until(endpoint_id, now) is not None:
            return  # another of the same round's requests failed already: one pause for all
        failures = self._failures.get(endpoint_id, 0) + 1
        self._failures[endpoint_id] = failures
        self._until[endpoint_id] = now + min(MAX_PAUSE_S, self.base_s * 2.0 ** (failures - 1))

    def succeeded(self, endpoint_id: str) -> None:
        self._failures.pop(endpoint_id, None)
        self._until.pop(endpoint_id, None)
