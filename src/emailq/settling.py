"""Settle outcomes as mail goes out, in small groups: group commit for the broker.

Each outcome is handed over the moment it is known. While one ``settle`` call runs, the
outcomes that arrive wait and go together in the next call, so a busy worker settles in
groups (one round trip or one SQLite commit for many messages) and an idle one at once,
with no timer. A killed worker then re-sends at most what was on the wire or in the call
under way, not a whole batch.

A settle that fails (Redis failing over, SQLite busy) is tried again with backoff: it is
fenced by each message's token, so a repeat changes nothing that was already settled,
while giving up would let the lease lapse and the mail go out a second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from emailq.broker import Outcome

log = logging.getLogger(__name__)


class Settler:
    def __init__(
        self,
        settle: Callable[[Sequence[Outcome]], Awaitable[object]],
        on_settled: Callable[[Sequence[Outcome]], None] | None = None,
        on_finished: Callable[[Sequence[Outcome]], None] | None = None,
        retry_base_s: float = 0.1,
        retry_cap_s: float = 2.0,
        give_up_after_s: float = 120.0,
    ) -> None:
        self.settle = settle  # one broker call (emailq.broker.calls)
        self.on_settled = on_settled
        self.on_finished = on_finished  # settled or given up on, either way out of our hands
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.give_up_after_s = give_up_after_s
        self._pending: list[Outcome] = []
        self._runner: asyncio.Task[None] | None = None

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())

    async def flush(self) -> None:
        """Return once every outcome added so far is settled (or given up on)."""
        while self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)

    async def _run(self) -> None:
        while self._pending:
            # One turn of the loop first: outcomes that arrive in the same turn (replies
            # read together) join this group instead of waiting for the next call.
            await asyncio.sleep(0)
            group, self._pending = self._pending, []
            try:
                await self._settle(group)
            finally:
                if self.on_finished is not None:
                    self.on_finished(group)

    async def _settle(self, group: list[Outcome]) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.give_up_after_s
        delay = self.retry_base_s
        while True:
            try:
                await self.settle(group)
                break
            except Exception as error:
                if loop.time() + delay > give_up_at:
                    # The leases lapse and another worker will send these again.
                    log.error("could not settle %d outcomes (%s); giving up", len(group),
                              type(error).__name__)  # fmt: skip
                    return
                log.warning("settling %d outcomes failed (%s); trying again in %.1f s",
                            len(group), type(error).__name__, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(self.retry_cap_s, delay * 2)
        if self.on_settled is not None:
            self.on_settled(group)
