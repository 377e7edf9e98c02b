"""Bearer API keys → the caller's tenant; the per-tenant intake rate limit."""

from __future__ import annotations

import math

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from emailq.api.problems import Problem
from emailq.keys import ApiKey, KeyStore
from emailq.ratelimit import Limit, Limiter, LimitRequest

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


async def spend_tenant_budget(
    limiter: Limiter | None, tenant: str, rate: float | None, burst: float, emails: int
) -> None:
    """Charge ``emails`` to the tenant's intake rate; 429 with Retry-After when over it."""
    if limiter is None or rate is None:
        return
    cost = min(float(emails), burst)  # a batch larger than the burst waits for a full bucket
    request = LimitRequest((Limit(f"intake:{tenant}", rate, burst),), cost=cost)
    grant = await run_in_threadpool(limiter.try_acquire, [request])
    if not grant.granted[0]:
        retry_after = str(max(1, math.ceil(grant.wait)))
        raise Problem(
            429, f"tenant {tenant!r} is over its intake rate of {rate:g} emails/s",
            headers={"Retry-After": retry_after},
        )  # fmt: skip
