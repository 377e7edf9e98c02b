"""The shared provider health store: one contract, every backend (memory, SQLite, Redis)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from conftest import REDIS_URL, require_redis
from emailq.clock import ManualClock
from emailq.failover.redis import RedisHealthStore
from emailq.failover.sqlite import SQLiteHealthStore
from emailq.failover.state import ProviderHealth
from emailq.failover.store import HealthStore, MemoryHealthStore


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HealthStore]:
    if request.param == "memory":
        yield MemoryHealthStore()
    elif request.param == "sqlite":
        opened = SQLiteHealthStore(str(tmp_path / "queue.db"))
        yield opened
        opened.close()
    else:
        require_redis()
        client = redis.Redis.from_url(REDIS_URL)
        opened = RedisHealthStore(client, f"emailq-test-{uuid.uuid4().hex}")
        yield opened
        client.delete(opened.health_key, opened.checker_key)
        client.close()


def test_records_are_created_updated_and_read_back(store: HealthStore) -> None:
    assert store.read() == {}
    first = store.update("smtp://a:25", lambda h: replace(h, failures=1, reason="refused"))
    assert first == ProviderHealth("smtp://a:25", failures=1, reason="refused")
    store.update("smtp://a:25", lambda h: replace(h, failures=h.failures + 1))
    store.update("resend://api", lambda h: replace(h, down=True))
    assert store.read() == {
        "smtp://a:25": ProviderHealth("smtp://a:25", failures=2, reason="refused"),
        "resend://api": ProviderHealth("resend://api", down=True),
    }


def test_concurrent_updates_are_not_lost(store: HealthStore) -> None:
    def bump() -> None:
        for _ in range(25):
            store.update("a", lambda h: replace(h, failures=h.failures + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.read()["a"].failures == 100


def test_one_checker_at_a_time_until_its_lease_lapses(store: HealthStore) -> None:
    assert store.hold_checker("one", 0.3)
    assert store.hold_checker("one", 0.3)  # renewed
    assert not store.hold_checker("two", 0.3)
    import time

    time.sleep(0.35)
    assert store.hold_checker("two", 0.3)
    assert not store.hold_checker("one", 0.3)


def test_the_sqlite_lease_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SQLiteHealthStore(str(tmp_path / "q.db"), clock)
    assert store.hold_checker("one", 10)
    clock.advance(9)
    assert not store.hold_checker("two", 10)
    clock.advance(2)
    assert store.hold_checker("two", 10)
    store.close()
