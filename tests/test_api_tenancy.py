"""What one tenant may do and see through the API (issue 11): From domains of its own, its
own queue counts (an operator key sees all), /metrics behind an operator key off loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from deployments import deployment_for
from emailq.api import create_app
from emailq.deployment import Deployment

pytestmark = pytest.mark.anyio

EMAIL = {"from": "planner@weddings.example", "to": "guest@example.org", "subject": "Hi",
         "text": "See you there."}  # fmt: skip


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    api = {"from_domains": {"acme": ["Weddings.example"]}}
    with deployment_for(broker_url, api=api) as opened:
        yield opened


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
        yield client


def bearer(deployment: Deployment, tenant: str, **options: Any) -> dict[str, str]:
    _, secret = deployment.keys.create(tenant, **options)
    return {"Authorization": f"Bearer {secret}"}


async def test_a_tenant_with_from_domains_may_send_from_those_only(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme, other = bearer(deployment, "acme"), bearer(deployment, "other")
    assert (await client.post("/v1/emails", json=EMAIL, headers=acme)).status_code == 202
    spoofed = EMAIL | {"from": "ceo@bank.example"}
    refused = await client.post("/v1/emails", json=spoofed, headers=acme)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["from"]
    assert "weddings.example" in refused.json()["errors"][0]["message"]
    batch = {"template": {k: v for k, v in spoofed.items() if k != "to"},
             "recipients": [{"to": "guest@example.org"}]}  # fmt: skip
    refused = await client.post("/v1/emails/batch", json=batch, headers=acme)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["template.from"]
    # a tenant not named may send from any domain
    assert (await client.post("/v1/emails", json=spoofed, headers=other)).status_code == 202
    assert deployment.broker.stats().backlog == 2
