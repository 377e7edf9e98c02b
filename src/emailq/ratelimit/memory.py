"""In-process limits: for one worker process, or tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from emailq.clock import Clock, now
from emailq.ratelimit.base import Grant, Limiter, LimitRequest, decide


class MemoryLimiter(Limiter):
    def __init__(self, clock: Clock = now) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def try_acquire(self, requests: Sequence[LimitRequest]) -> Grant:
        with self._lock:
            return decide(requests, self._tat, self.clock())
