"""The request body cap with the default settings (issue 11): above 10 MB is 413, naming
the limit, whatever the model would have said of the email."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from deployments import deployment_for
from emailq.api import create_app

pytestmark = pytest.mark.anyio

EMAIL = {"from": "planner@weddings.example", "to": "guest@example.org", "subject": "Hi"}
CAP = 10_000_000


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    with deployment_for(f"sqlite:///{tmp_path}/queue.db") as deployment:
        _, secret = deployment.keys.create("acme")
        transport = httpx.ASGITransport(app=create_app(deployment))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            yield client, {"Authorization": f"Bearer {secret}"}


def body_of(size: int) -> bytes:
    """An email whose JSON body is exactly ``size`` bytes."""
    empty = json.dumps(EMAIL | {"text": ""}).encode()
    return json.dumps(EMAIL | {"text": "x" * (size - len(empty))}).encode()


async def test_bodies_over_10_mb_get_413_naming_the_limit(
    client: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, auth = client
    for size in (CAP + 1, 10 * 1024 * 1024 + 1):  # was 202, and 422
        body = body_of(size)
        assert len(body) == size
        response = await http.post("/v1/emails", content=body, headers=auth)
        assert response.status_code == 413, (size, response.text[:200])
        assert response.headers["content-type"] == "application/problem+json"
        assert "10000000 bytes" in response.json()["detail"]


async def test_a_body_at_the_cap_is_read(
    client: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, auth = client
    response = await http.post("/v1/emails", content=body_of(CAP), headers=auth)
    assert response.status_code == 202, response.text[:200]
