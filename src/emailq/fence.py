"""The fence at the wire: may this process still send a message it leased?

A lease lasts ``lease_s`` from when the broker granted it. The broker's clock is not ours,
so the deadline is counted on this process's monotonic clock from the moment *before* we
asked for the lease (or for its renewal): the broker granted it no earlier than that, so
our deadline is never later than the broker's. The monotonic clock keeps running while a
process is stopped (SIGSTOP, a long GC pause, a VM freeze), so a process that wakes up
past its deadline sends nothing: another worker may own the message by now. A send must
start at least ``margin_s`` before the deadline, room for the send itself to finish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

NEVER = -math.inf


class LeaseFence:
    def __init__(
        self, lease_s: float, margin_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lease_s = lease_s
        self.margin_s = margin_s
        self.clock = clock
        self.closed = False  # shutting down: nothing new goes out
        self._deadline: dict[str, float] = {}

    def hold(self, ids: Iterable[str], asked_at: float) -> None:
        """The broker granted (or renewed) these leases in reply to a call made at
        ``asked_at`` (this clock)."""
        deadline = asked_at + self.lease_s
        for message_id in ids:
            self._deadline[message_id] = deadline

    def lose(self, ids: Iterable[str]) -> None:
        """These leases are gone (the broker said so): never send them."""
        for message_id in ids:
            self._deadline[message_id] = NEVER

    def forget(self, ids: Iterable[str]) -> None:
        for message_id in ids:
            self._deadline.pop(message_id, None)

    def holds(self, message_id: str) -> bool:
        """Whether the lease is ours to renew: granted, and neither lost nor settled."""
        return self._deadline.get(message_id, NEVER) != NEVER

    def may_send(self, message_id: str) -> bool:
        if self.closed:
            return False
        return self.clock() + self.margin_s < self._deadline.get(message_id, NEVER)

    def lost(self, message_id: str) -> bool:
        """Whether the lease ran out or was taken (as opposed to the fence being closed)."""
        return not self.clock() + self.margin_s < self._deadline.get(message_id, NEVER)
