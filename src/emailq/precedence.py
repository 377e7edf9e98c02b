"""Critical mail first for the CPU and the connections, not only in the queue.

The lanes order what a lease takes; this orders what a worker *does*. While the process
holds critical mail that has not been sent yet, the other loops yield: they lease no new
batch and start no new non-critical send, so the event loop, the GIL and the broker's
thread pool serve the critical sends. Sends already on the wire finish.

A yield lasts at most ``max_yield_s`` at a time: a flood of critical mail slows bulk mail
but cannot starve it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


class CriticalFirst:
    def __init__(self, max_yield_s: float = 1.0) -> None:
        self.max_yield_s = max_yield_s
        self._unsent: set[str] = set()
        self._clear = asyncio.Event()
        self._clear.set()

    @property
    def pending(self) -> bool:
        return bool(self._unsent)

    def hold(self, message_ids: Iterable[str]) -> None:
        """Critical messages just leased by this process."""
        self._unsent.update(message_ids)
        if self._unsent:
            self._clear.clear()

    def done(self, message_id: str) -> None:
        """Its outcome is known (sent, failed, put back): it needs the process no more."""
        self._unsent.discard(message_id)
        if not self._unsent:
            self._clear.set()

    def forget(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self.done(message_id)

    async def wait(self) -> None:
        """Return once no critical mail is in hand, or after ``max_yield_s``."""
        if self._clear.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._clear.wait(), self.max_yield_s)
