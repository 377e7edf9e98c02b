"""Where the providers' health lives: beside the queue, shared by every worker of it.

One process at a time holds the **checker lease** and runs the health checks; the others
read what it wrote. Any process may trip a provider (its breaker saw a burst of failures),
so a record changes by read-modify-write in one transaction (SQLite) or one optimistic
transaction (Redis ``WATCH``).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

from emailq.clock import Clock, now
from emailq.failover.state import ProviderHealth

Change = Callable[[ProviderHealth], ProviderHealth]


class HealthStore(abc.ABC):
    @abc.abstractmethod
    def read(self) -> dict[str, ProviderHealth]:
        """Every provider's record (providers never checked have none)."""

    @abc.abstractmethod
    def update(self, name: str, change: Change) -> ProviderHealth:
        """Apply ``change`` to the provider's record (a fresh one if none), atomically."""

    @abc.abstractmethod
    def hold_checker(self, holder: str, lease_s: float) -> bool:
        """Take or renew the checker lease; False while another holder's lease runs."""

    def close(self) -> None:  # noqa: B027 - stores without resources need not override
        pass


class MemoryHealthStore(HealthStore):
    """One process's own (tests, and a chain with no broker to share through)."""

    def __init__(self, clock: Clock = now) -> None:
        self.clock = clock
        self._records: dict[str, ProviderHealth] = {}
        self._holder: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, ProviderHealth]:
        with self._lock:
            return dict(self._records)

    def update(self, name: str, change: Change) -> ProviderHealth:
        with self._lock:
            record = change(self._records.get(name) or ProviderHealth(name))
            self._records[name] = record
            return record

    def hold_checker(self, holder: str, lease_s: float) -> bool:
        with self._lock:
            at = self.clock()
            if self._holder is None or self._holder[0] == holder or self._holder[1] <= at:
                self._holder = (holder, at + lease_s)
                return True
            return False
