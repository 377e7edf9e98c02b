"""What ``GET /health/ready`` asks: can the broker take mail now (reachable, not full), is
the provider reachable.

A check can block: a locked SQLite file, a provider host that does not answer, a Redis
connection stuck mid-failover. A readiness probe wants an answer within its own timeout,
so each check runs on a thread with a deadline, and at most one run of it is in flight:
probes that come while it hangs wait on that run instead of piling up threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool


class BoundedCheck:
    """``await check()``: the check's answer — None when all is well, else what is wrong —
    or "no answer within … s" when it takes longer than ``timeout``."""

    def __init__(self, check: Callable[[], str | None], timeout: float) -> None:
        self.check = check
        self.timeout = timeout
        self._running: asyncio.Future[str | None] | None = None

    async def __call__(self) -> str | None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(run_in_threadpool(self.check))
        try:
            # shield: a probe that times out leaves the run going for the next probe to join
            return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
