"""Rate limiters: the GCRA arithmetic, all-or-nothing requests, and sharing between users."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import REDIS_URL, require_redis
from emailq.clock import ManualClock
from emailq.ratelimit import Limit, Limiter, LimitRequest, MemoryLimiter
from emailq.ratelimit.redis import RedisLimiter
from emailq.ratelimit.rules import RateRules
from emailq.ratelimit.sqlite import SQLiteLimiter

PROVIDER = Limit("provider:smtp", rate=10, burst=5)
DOMAIN = Limit("domain:example.org", rate=2, burst=1)


@pytest.fixture(params=["memory", "sqlite"])
def limiter(request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path) -> Limiter:
    if request.param == "memory":
        return MemoryLimiter(clock)
    return SQLiteLimiter(str(tmp_path / "limits.db"), clock)


def test_a_burst_passes_then_the_rate_holds(limiter: Limiter, clock: ManualClock) -> None:
    grant = limiter.try_acquire([LimitRequest((PROVIDER,))] * 8)
    assert grant.granted == (True,) * 5 + (False,) * 3
    assert grant.wait == pytest.approx(0.1, abs=1e-5)
    clock.advance(0.1)
    assert limiter.try_acquire([LimitRequest((PROVIDER,))] * 2).granted == (True, False)


def test_a_request_passes_all_its_limits_or_spends_none(
    limiter: Limiter, clock: ManualClock
) -> None:
    both = LimitRequest((PROVIDER, DOMAIN))
    grant = limiter.try_acquire([both, both, LimitRequest((PROVIDER,))])
    # The second is held by its domain, so it must not spend the provider's budget:
    # the third (another domain) still gets the provider's second slot... and more.
    assert grant.granted == (True, False, True)
    assert grant.wait == pytest.approx(0.5, abs=1e-5)
    provider_only = limiter.try_acquire([LimitRequest((PROVIDER,))] * 5)
    assert provider_only.granted.count(True) == 3


def test_non_critical_mail_leaves_the_reserve_of_a_burst_to_critical_mail(
    limiter: Limiter, clock: ManualClock
) -> None:
    provider = Limit("provider:smtp", rate=0.1, burst=10)
    bulk, critical = LimitRequest((provider,), reserve=0.2), LimitRequest((provider,))
    assert limiter.try_acquire([bulk] * 10).granted == (True,) * 8 + (False,) * 2
    assert limiter.try_acquire([critical] * 3).granted == (True, True, False)
    clock.advance(10)  # one unit back: still inside the reserve, so only critical may have it
    assert limiter.try_acquire([bulk, critical]).granted == (False, True)


def test_a_burst_too_small_for_a_reserve_keeps_none(limiter: Limiter, clock: ManualClock) -> None:
    single = Limit("domain:tiny.example", rate=1, burst=1)
    assert limiter.try_acquire([LimitRequest((single,), reserve=0.2)] * 2).granted == (
        True, False,
    )  # fmt: skip
    clock.advance(1)
    assert limiter.try_acquire([LimitRequest((single,), reserve=0.2)]).granted == (True,)


def test_sqlite_limits_are_shared_between_connections(clock: ManualClock, tmp_path: Path) -> None:
    one = SQLiteLimiter(str(tmp_path / "shared.db"), clock)
    two = SQLiteLimiter(str(tmp_path / "shared.db"), clock)
    assert one.try_acquire([LimitRequest((DOMAIN,))]).granted == (True,)
    assert two.try_acquire([LimitRequest((DOMAIN,))]).granted == (False,)


def test_a_sqlite_refusal_takes_no_write_lock(clock: ManualClock, tmp_path: Path) -> None:
    """A flooding tenant's refusals take no write lock from the queue's intake (issue 11):
    they are answered while another connection holds it."""
    limiter = SQLiteLimiter(str(tmp_path / "limits.db"), clock)
    assert limiter.try_acquire([LimitRequest((DOMAIN,))]).granted == (True,)
    writer = sqlite3.connect(tmp_path / "limits.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # an intake commit in progress
    statements: list[str] = []
    limiter._db.set_trace_callback(statements.append)
    refused = limiter.try_acquire([LimitRequest((DOMAIN,))] * 3)
    assert refused.granted == (False,) * 3
    assert refused.wait == pytest.approx(0.5, abs=1e-5)
    assert not [s for s in statements if s.startswith("BEGIN")]
    writer.execute("COMMIT")
    clock.advance(0.5)
    assert limiter.try_acquire([LimitRequest((DOMAIN,))] * 2).granted == (True, False)
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        Limit("x", 0)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        Limit("x", 1, burst=0)
    for reserve in (-0.1, 1.0):
        with pytest.raises(ValueError, match="reserve must be at least 0 and below 1"):
            LimitRequest((PROVIDER,), reserve=reserve)


def test_rules_name_provider_domain_and_tenant_limits() -> None:
    rules = RateRules(provider_rate=100, domain_rate=5, domain_rates={"gmail.com": 50},
                      tenant_rate=20)  # fmt: skip
    request = rules.request("smtp", "acme", ("a@Gmail.com", "b@example.org", "c@gmail.com"))
    assert [(limit.key, limit.rate) for limit in request.limits] == [
        ("provider:smtp", 100), ("domain:example.org", 5), ("domain:gmail.com", 50),
        ("tenant:acme", 20),
    ]  # fmt: skip
    assert not RateRules().active
    assert request.reserve == 0.2  # not critical: leaves a fifth of each burst
    critical = rules.request("smtp", "acme", ("a@gmail.com",), critical=True)
    assert critical.reserve == 0.0
    assert RateRules(critical_reserve=0.5).request("smtp", "acme", ()).reserve == 0.5


@pytest.fixture
def redis_limiter() -> Iterator[RedisLimiter]:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"emailq-test-{uuid.uuid4().hex}"
    yield RedisLimiter(client, prefix)
    keys = list(client.scan_iter(match=f"{{{prefix}}}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_redis_limits_grant_all_or_nothing_and_hold_the_rate(redis_limiter: RedisLimiter) -> None:
    both = LimitRequest((PROVIDER, DOMAIN))
    grant = redis_limiter.try_acquire([both, both, LimitRequest((PROVIDER,))])
    assert grant.granted == (True, False, True)
    assert 0.3 < grant.wait <= 0.5
    granted, started = 0, time.monotonic()
    while time.monotonic() - started < 1.0:
        step = redis_limiter.try_acquire([LimitRequest((DOMAIN,))])
        granted += step.granted[0]
        time.sleep(step.wait or 0.001)
    assert 1 <= granted <= 3  # 2 per second, the first of them already spent above


def test_redis_limits_keep_the_same_reserve_for_critical_mail(redis_limiter: RedisLimiter) -> None:
    provider = Limit("provider:smtp", rate=0.1, burst=10)
    bulk, critical = LimitRequest((provider,), reserve=0.2), LimitRequest((provider,))
    assert redis_limiter.try_acquire([bulk] * 10).granted == (True,) * 8 + (False,) * 2
    assert redis_limiter.try_acquire([critical] * 3).granted == (True, True, False)
    single = Limit("domain:tiny.example", rate=0.1, burst=1)
    assert redis_limiter.try_acquire([LimitRequest((single,), reserve=0.2)] * 2).granted == (
        True, False,
    )  # fmt: skip


def test_redis_limit_keys_expire(redis_limiter: RedisLimiter) -> None:
    redis_limiter.try_acquire([LimitRequest((DOMAIN,))])
    ttl = redis_limiter.client.pttl(f"{redis_limiter.key_prefix}{DOMAIN.key}")
    assert 0 < ttl <= 2000
