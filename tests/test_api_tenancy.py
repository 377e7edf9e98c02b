"""What one tenant may do and see through the API (issue 11): From domains of its own, its
own queue counts (an operator key sees all), /metrics behind an operator key off loopback."""

from __future__ import annotations

from collections.abc import Iterator
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


async def test_queues_show_the_callers_tenant_and_an_operator_sees_all(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme, other = bearer(deployment, "acme"), bearer(deployment, "other")
    operator = bearer(deployment, "ops", operator=True)
    for _ in range(3):
        assert (await client.post("/v1/emails", json=EMAIL, headers=acme)).status_code == 202
    assert (await client.post("/v1/emails", json=EMAIL, headers=other)).status_code == 202

    async def queued(headers: dict[str, str]) -> int:
        response = await client.get("/v1/queues", headers=headers)
        assert response.status_code == 200
        return sum(lane["depth"]["queued"] for lane in response.json().values())

    assert (await queued(acme), await queued(other), await queued(operator)) == (3, 1, 4)


@pytest.mark.parametrize(
    ("host", "access", "open_to_all"),
    [("127.0.0.1", "auto", True), ("::1", "auto", True), ("0.0.0.0", "auto", False),
     ("10.0.0.5", "auto", False), ("0.0.0.0", "open", True), ("127.0.0.1", "operator", False)],
)  # fmt: skip
async def test_metrics_need_an_operator_key_when_the_api_listens_beyond_loopback(
    broker_url: str, host: str, access: str, open_to_all: bool
) -> None:
    with deployment_for(broker_url, api={"host": host, "metrics_access": access}) as opened:
        tenant, operator = bearer(opened, "acme"), bearer(opened, "ops", operator=True)
        transport = httpx.ASGITransport(app=create_app(opened))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            anonymous = await client.get("/metrics")
            as_tenant = await client.get("/metrics", headers=tenant)
            as_operator = await client.get("/metrics", headers=operator)
    assert as_operator.status_code == 200 and b"emailq_" in as_operator.content
    if open_to_all:
        assert (anonymous.status_code, as_tenant.status_code) == (200, 200)
    else:
        assert (anonymous.status_code, as_tenant.status_code) == (401, 403)


async def test_a_flooding_tenant_is_refused_before_its_body_is_read_and_others_are_not(
    broker_url: str,
) -> None:
    api = {"tenant_rates": {"flood": 1}, "tenant_burst": 2}
    with deployment_for(broker_url, api=api) as opened:
        flood, steady = bearer(opened, "flood"), bearer(opened, "steady")
        transport = httpx.ASGITransport(app=create_app(opened))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            codes = [(await client.post("/v1/emails", json=EMAIL, headers=flood)).status_code
                     for _ in range(3)]  # fmt: skip
            # refused from memory: not even read, so a body that is not JSON is 429, not 422
            garbage = await client.post("/v1/emails", content=b"{nope", headers=flood)
            others = [(await client.post("/v1/emails", json=EMAIL, headers=steady)).status_code
                      for _ in range(10)]  # fmt: skip
    assert codes == [202, 202, 429]
    assert garbage.status_code == 429 and int(garbage.headers["retry-after"]) >= 1
    assert others == [202] * 10  # a tenant without a rate of its own has none


async def test_a_refused_tenant_is_answered_in_front_of_the_app_with_the_same_problem(
    broker_url: str,
) -> None:
    api = {"tenant_rates": {"flood": 1}, "tenant_burst": 1, "max_body_bytes": 1024}
    with deployment_for(broker_url, api=api) as opened:
        flood, steady = bearer(opened, "flood"), bearer(opened, "steady")
        transport = httpx.ASGITransport(app=create_app(opened))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            first = await client.post("/v1/emails", json=EMAIL, headers=flood)
            by_route = await client.post("/v1/emails", json=EMAIL, headers=flood)
            # Refused from memory before any other middleware: the size limit (413) is
            # never reached, and the answer is the route's own problem document.
            too_big = await client.post("/v1/emails/batch", content=b"x" * 2000, headers=flood)
            steady_big = await client.post("/v1/emails", content=b"x" * 2000, headers=steady)
    assert (first.status_code, by_route.status_code, too_big.status_code) == (202, 429, 429)
    assert too_big.json()["detail"] == by_route.json()["detail"]
    assert "'flood'" in too_big.json()["detail"]
    assert too_big.headers["content-type"] == by_route.headers["content-type"]
    assert int(too_big.headers["retry-after"]) >= 1
    assert steady_big.status_code == 413  # everyone else goes through the whole app
