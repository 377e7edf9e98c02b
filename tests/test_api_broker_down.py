"""An API whose Redis is down when it starts: it opens its port at once, answers readiness
with 503 naming the broker, and requests with 503 + Retry-After after a few seconds
(issue 11; both used to ride a minute of retries)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emailq.sink import free_port


def test_the_api_starts_and_answers_readiness_while_redis_is_down(
    redis_server: str, tmp_path: Path
) -> None:
    redis_port = free_port()  # a real redis-server, stopped before the API starts
    stopped = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    stopped.kill()
    stopped.wait()
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    env |= {"EMAILQ_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMAILQ_API_PORT": str(api_port)}  # fmt: skip
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "emailq", "serve"], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        response = _first_answer(f"http://127.0.0.1:{api_port}/health/ready", deadline_s=15)
        answered_in = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["retry-after"]
        body = response.json()
        assert body["broker"] is False and "unreachable" in body["broker_problem"]
        assert answered_in < 10, f"readiness answered only after {answered_in:.1f} s"
        # A request that needs Redis hears 503 after a few seconds, not after the minute of
        # reconnecting a worker rides out (a 15 s client timeout would fail the test).
        email = {"from": "planner@weddings.example", "to": "guest@example.org",
                 "subject": "Ceremony moved", "text": "Now at 15:30."}  # fmt: skip
        refused = httpx.post(f"http://127.0.0.1:{api_port}/v1/emails", json=email, timeout=15,
                             headers={"Authorization": "Bearer eq_some_key"})  # fmt: skip
        assert refused.status_code == 503 and refused.headers["retry-after"]
    finally:
        server.terminate()
        server.wait(10)


def _first_answer(url: str, deadline_s: float) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing answered at {url} within {deadline_s} s")
            time.sleep(0.05)
