"""Bearer API keys → the caller's tenant; the per-tenant intake rate limit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from emailq.api.problems import Problem
from emailq.keys import ApiKey, KeyStore
from emailq.ratelimit import Limit, Limiter, LimitRequest
from emailq.settings import ApiSection

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="emailq"'}


async def authenticate(request: Request, keys: KeyStore) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Problem(401, "send an API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    known, key = keys.cached(secret.strip())
    if not known:  # a miss reads the store: off the event loop
        key = await run_in_threadpool(keys.verify, secret.strip())
    if key is None:  # unknown and revoked keys look alike: nothing to learn by probing
        raise Problem(401, "the API key is not valid", headers=_CHALLENGE)
    return key


class TenantBudget:
    """Each tenant's intake rate (``api.tenant_rate``, or its own in ``api.tenant_rates``):
    429 with Retry-After beyond it.

    A tenant refused one email is refused again from memory until then: a flood costs no
    body read, no parsing and no limiter call, so the other tenants' requests do not queue
    behind it (issue 11).
    """

    def __init__(self, limiter: Callable[[], Limiter], api: ApiSection) -> None:
        self._limiter = limiter
        self.api = api
        self._refused_until: dict[str, float] = {}  # tenant → monotonic time

    def rate_of(self, tenant: str) -> float | None:
        return self.api.tenant_rates.get(tenant, self.api.tenant_rate)

    @property
    def refusing(self) -> bool:
        """Whether any tenant is being refused from memory now (or was, until asked)."""
        return bool(self._refused_until)

    def refuse_if_flooding(self, tenant: str) -> None:
        until = self._refused_until.get(tenant)
        if until is None:
            return
        wait = until - time.monotonic()
        if wait <= 0:
            del self._refused_until[tenant]
            return
        raise self._problem(tenant, wait)

    async def spend(self, tenant: str, emails: int) -> None:
        """Charge ``emails`` to the tenant's rate; 429 with Retry-After when over it."""
        rate = self.rate_of(tenant)
        if rate is None:
            return
        burst = self.api.burst_for(rate)
        cost = min(float(emails), burst)  # a batch larger than the burst waits for a full bucket
        request = LimitRequest((Limit(f"intake:{tenant}", rate, burst),), cost=cost)
        grant = await run_in_threadpool(self._limiter().try_acquire, [request])
        if grant.granted[0]:
            return
        if cost <= 1:  # a batch's wait is longer than one email's: remember only these
            if len(self._refused_until) > 10_000:
                self._refused_until.clear()
            self._refused_until[tenant] = time.monotonic() + grant.wait
        raise self._problem(tenant, grant.wait)

    def _problem(self, tenant: str, wait: float) -> Problem:
        return Problem(
            429, f"tenant {tenant!r} is over its intake rate of {self.rate_of(tenant):g} emails/s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )  # fmt: skip
