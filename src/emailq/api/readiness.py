"""What ``GET /health/ready`` asks: is the broker reachable, is the provider.

A check can block: a locked SQLite file, a provider host that does not answer, a Redis
connection stuck mid-failover. A readiness probe wants an answer within its own timeout,
so each check runs on a thread with a deadline, and at most one run of it is in flight:
probes that come while it hangs wait on that run instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool

READY_TIMEOUT = 2.0  # seconds; under the usual 5 s of a Kubernetes probe


class BoundedCheck:
    """``await check()``: the check's answer, or False when it takes over ``timeout`` s."""

    def __init__(self, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
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


def provider_probe(provider_url: str | None) -> Callable[[], bool]:
    """A cheap reachability check for the provider: a TCP connect for SMTP."""
    if not provider_url:
        return lambda: True
    parts = urlsplit(provider_url)
    if parts.scheme not in ("smtp", "smtps"):
        return lambda: True

    def reachable() -> bool:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return reachable
