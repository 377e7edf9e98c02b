"""Where the monitor keeps its data: in the broker itself, so the embedded default needs
nothing else. Opened from a :class:`~emailq.deployment.Deployment` (:func:`open_store`).

- **samples**: what workers publish every few seconds (:mod:`.recorder`), read by the
  monitor in the order they were written, from a cursor kept beside them;
- **history**: one snapshot per interval slot, at most one per slot whoever writes it,
  trimmed past its retention;
- **the lease**: which monitor process writes (any number may run; one writes);
- small named records (alert states, silences, fleet totals).
"""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass

from emailq.broker import Broker
from emailq.clock import Clock, now

SAMPLE_MAX_AGE_S = 3600.0  # samples nobody read (no monitor running) are dropped after this


@dataclass(frozen=True, slots=True)
class Samples:
    bodies: list[bytes]
    cursor: str  # pass to write_snapshot: the samples up to here were taken in


class MonitorStore(abc.ABC):
    def __init__(self, clock: Clock = now) -> None:
        self.clock = clock

    @abc.abstractmethod
    def publish_sample(self, body: bytes) -> None: ...

    @abc.abstractmethod
    def take_samples(self, limit: int = 20_000) -> Samples:
        """Samples after the stored cursor, oldest first (nothing is removed yet)."""

    @abc.abstractmethod
    def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        """Take or renew the writer's lease; False while another owner holds it."""

    @abc.abstractmethod
    def release_lease(self, owner: str) -> None: ...

    @abc.abstractmethod
    def write_snapshot(
        self, owner: str, at: float, body: bytes, cursor: str, keep_after: float, max_points: int
    ) -> bool:
        """Store one snapshot for slot ``at`` if ``owner`` holds the lease and nobody wrote
        that slot; move the cursor, drop the samples taken in, trim history before
        ``keep_after`` and beyond ``max_points``. True if written."""

    @abc.abstractmethod
    def history(self, since: float, until: float) -> list[tuple[float, bytes]]:
        """Snapshots with ``since < at <= until``, oldest first."""

    @abc.abstractmethod
    def get(self, name: str) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, name: str, body: bytes) -> None: ...

    def close(self) -> None:  # noqa: B027 - a store on a shared connection has nothing to close
        """Release what the store opened itself."""


def open_store(broker: Broker, clock: Clock = now) -> MonitorStore:
    """The store beside this broker: tables in its SQLite file, or keys under its prefix."""
    # The broker's own backend module is loaded already; the other one is not loaded just to
    # be ruled out (the SQLite broker's module costs a Redis worker ~9 ms of its start).
    sqlite = sys.modules.get("emailq.broker.sqlite")
    if sqlite is not None and isinstance(broker, sqlite.SQLiteBroker):
        from emailq.monitor.store_sqlite import SQLiteMonitorStore

        return SQLiteMonitorStore(broker.path, clock)
    from emailq.broker.redis import RedisBroker
    from emailq.monitor.store_redis import RedisMonitorStore

    assert isinstance(broker, RedisBroker)
    return RedisMonitorStore(broker.client, broker.prefix, clock)
