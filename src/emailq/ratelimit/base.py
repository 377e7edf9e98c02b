"""The limiter contract and the GCRA step both implementations share."""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` units per second, with bursts of up to ``burst`` units at once."""

    key: str
    rate: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"limit {self.key}: rate must be a positive number")
        if self.burst < 1:
            raise ValueError(f"limit {self.key}: burst must be at least 1")

    @property
    def interval(self) -> float:
        return 1.0 / self.rate


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """``cost`` units against every one of ``limits`` (e.g. provider, domain, tenant).

    ``reserve`` is the share of each limit's burst that must remain after this request is
    granted: non-critical mail asks with a reserve, critical mail without, so bulk can never
    spend the budget a ceremony change needs. A burst too small to keep a reserve beside
    one request keeps none: an idle limit always lets a request that fits its burst through.
    """

    limits: tuple[Limit, ...]
    cost: float = 1.0
    reserve: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < 1:
            raise ValueError(f"reserve must be at least 0 and below 1: {self.reserve}")


@dataclass(frozen=True, slots=True)
class Grant:
    """Which requests passed (by index), and how long until the first denied one may."""

    granted: tuple[bool, ...]
    wait: float  # seconds; 0.0 when everything was granted


def gcra_step(
    tat: float, now: float, limit: Limit, cost: float, reserve: float = 0.0
) -> tuple[float, float]:
    """``(new_tat, wait)``: the key's next theoretical arrival time if granted, and how long
    the request must wait first (0 when it may go now). gcra.lua computes the same."""
    new_tat = max(tat, now) + cost * limit.interval
    spendable = max(limit.burst * (1 - reserve), min(cost, limit.burst))  # units at once
    wait = new_tat - spendable * limit.interval - now
    # Epoch seconds carry ~0.2 µs of float error; a microsecond early is on time.
    return new_tat, wait if wait > 1e-6 else 0.0


def decide(requests: Sequence[LimitRequest], tats: dict[str, float], at: float) -> Grant:
    """Grant each request that passes all its limits, updating ``tats`` for the granted."""
    granted: list[bool] = []
    wait = 0.0
    for request in requests:
        cost, reserve = request.cost, request.reserve
        steps = [
            (limit.key, *gcra_step(tats.get(limit.key, at), at, limit, cost, reserve))
            for limit in request.limits
        ]
        longest = max((w for _, _, w in steps), default=0.0)
        granted.append(longest == 0)
        if longest > 0:
            wait = longest if wait == 0 else min(wait, longest)
            continue
        for key, new_tat, _ in steps:
            tats[key] = new_tat
    return Grant(tuple(granted), wait)


class Limiter(abc.ABC):
    @abc.abstractmethod
    def try_acquire(self, requests: Sequence[LimitRequest]) -> Grant:
        """Grant every request that passes all its limits now, in order."""

    async def acquire(self, request: LimitRequest, max_wait: float = 60.0) -> None:
        """Wait until ``request`` passes; raise ``TimeoutError`` after ``max_wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            grant = await asyncio.to_thread(self.try_acquire, [request])
            if grant.granted[0]:
                return
            if loop.time() + grant.wait > deadline:
                raise TimeoutError(f"rate limit wait exceeds {max_wait} s")
            await asyncio.sleep(grant.wait)
