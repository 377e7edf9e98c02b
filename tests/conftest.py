"""Shared fixtures: a broker of each backend, a controllable clock, and service checks.

When the ``CI`` environment variable is set, a missing service fails the run; locally the
tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import redis

from emailq.api.app import create_app
from emailq.broker import Broker, open_broker
from emailq.clock import ManualClock
from emailq.deployment import Deployment
from emailq.sink import free_port

REDIS_URL = os.environ.get("EMAILQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BACKENDS = ("sqlite", "redis")


def missing(reason: str) -> NoReturn:
    """A service or tool a test needs is not here: a failure under CI, a skip locally."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing service is a failure)")
    pytest.skip(reason)


def require_redis() -> None:
    """Fail (under CI) or skip (locally) when the test Redis does not answer."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        missing(f"Redis at {REDIS_URL} did not answer: {error}")


@pytest.fixture
def redis_server() -> str:
    """The redis-server program, for tests that start (and kill) servers of their own."""
    program = shutil.which("redis-server")
    if program is None:
        missing("redis-server is not installed: this test starts servers of its own")
    return program


def redis_url_with_prefix(prefix: str) -> str:
    return f"{REDIS_URL}?prefix={prefix}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=BACKENDS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty queue of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db"
        return
    require_redis()
    url = redis_url_with_prefix(f"emailq-test-{uuid.uuid4().hex}")
    yield url
    with open_broker(url) as leftover:
        leftover.purge()


@pytest.fixture
def broker(broker_url: str, clock: ManualClock) -> Iterator[Broker]:
    """An empty broker of each backend whose time is the manual ``clock``."""
    with open_broker(broker_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def small_redis(redis_server: str, tmp_path: Path) -> Iterator[str]:
    """A Redis of our own with 2 MB of memory and a password."""
    port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path), "--maxmemory", "2mb", "--maxmemory-policy", "noeviction",
         "--requirepass", "s3cret-pass"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    server.kill()
    server.wait()


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    """The API of the test module's ``deployment`` fixture, in process (no socket)."""
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as opened:
        yield opened
