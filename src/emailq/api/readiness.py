"""What ``GET /health/ready`` asks: is the broker reachable, is the provider.

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
    """``await check()``: the check's answer, or False when it takes over ``timeout`` s."""

    def __init__(self, check: Callable[[], bool], timeout: float) -> None:
        self.check = check
        self.timeout = timeout
        self._running: asyncio.Future[bool] | None = None

    async def __call__(self) -> bool:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(run_in_threadpool(self.check))
        try:
            # shield: a probe that times out leaves the run going for the next probe to join
            return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            return False
