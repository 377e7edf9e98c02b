"""A worker's hot broker calls from its event loop: lease, settle and heartbeat.

The broker's methods block (sqlite3, redis-py), so by default each call runs on a thread.
A thread hop costs far more than the call on a busy 2-core machine: the event loop holds
the GIL, and the thread waits for it and hands it back at every step (measured: about
0.3 ms of CPU per settle, against 0.1 ms for the call itself). A backend with an asyncio
client of its own (:class:`emailq.broker.redis.RedisBroker`) answers these on the loop.

Made for one event loop and closed in it (:meth:`BrokerCalls.aclose`): an asyncio client's
connections belong to the loop that opened them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emailq.broker.base import Broker, Job, Outcome
    from emailq.lanes import Lane


class BrokerCalls:
    """Lease, settle and heartbeat without blocking the loop: each on a thread."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        lanes: Collection[Lane] | None = None,
        *,
        request_id: str | None = None,
    ) -> list[Job]:
        return await asyncio.to_thread(
            self.broker.lease, worker, max_n, lease_s, lanes, request_id=request_id
        )

    async def settle(self, outcomes: Sequence[Outcome]) -> list[str]:
        return await asyncio.to_thread(self.broker.settle, outcomes)

    async def heartbeat(self, jobs: Sequence[Job], lease_s: float) -> list[str]:
        return await asyncio.to_thread(self.broker.heartbeat, jobs, lease_s)

    async def wait_for_critical(self, timeout: float) -> None:
        """Return when critical mail may be ready: after ``timeout`` (a poll), or sooner
        where the backend can say so (Redis publishes each critical enqueue) or look for
        next to nothing (SQLite: a read on the loop every few milliseconds)."""
        await asyncio.sleep(timeout)

    async def aclose(self) -> None:
        """Close what these calls opened (nothing, on threads)."""
