"""Limits in Redis, shared by every worker process on every machine (one Lua call a batch)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from emailq.ratelimit.base import Grant, Limiter, LimitRequest

_SCRIPT = resources.files("emailq.ratelimit").joinpath("gcra.lua").read_text()


class RedisLimiter(Limiter):
    def __init__(self, client: redis.Redis, prefix: str = "emailq") -> None:
        self.client = client
        self.key_prefix = f"{{{prefix}}}:rl:"
        self._script = client.register_script(_SCRIPT)

    def try_acquire(self, requests: Sequence[LimitRequest]) -> Grant:
        if not requests:
            return Grant((), 0.0)
        args: list[Any] = [len(requests)]
        for request in requests:
            args += [request.cost, request.reserve, len(request.limits)]
            for limit in request.limits:
                args += [limit.key, round(limit.interval * 1_000_000), limit.burst]
        reply = self._script(keys=[self.key_prefix], args=args)
        return Grant(tuple(bool(flag) for flag in reply[:-1]), reply[-1] / 1_000_000)
