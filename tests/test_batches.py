"""Guest lists you can follow (issue 16): batch ids, per-recipient status, cancel, retry,
tenant scoping; through the API on both brokers, delivered by a worker to the SMTP sink."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from deployments import deployment_for
from emailq.broker import Broker, NewMessage, State
from emailq.deployment import Deployment
from emailq.message import parse_email
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.sink import SinkHandler, SmtpSink
from emailq.worker import Worker, WorkerSettings

pytestmark = pytest.mark.anyio

TEMPLATE = {"from": "Ana & Ben <hello@weddings.example>", "subject": "Dear {{ name }}",
            "text": "You are invited, {{ name }}.",
            "wedding": {"wedding_id": "w42", "kind": "invitation",
                        "ceremony_at": "2031-06-13T16:00:00+02:00"}}  # fmt: skip


class BouncingSink(SinkHandler):
    """Refuses for good (550) the addresses in ``bouncing``; a test may fix them later."""

    def __init__(self) -> None:
        super().__init__(keep_data=False)
        self.bouncing: set[str] = set()
        self.accepted: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.bouncing:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        self.accepted.append(address)
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[SmtpSink, BouncingSink]]:
    handler = BouncingSink()
    with SmtpSink(handler=handler) as server:
        yield server, handler


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url) as opened:
        yield opened


def bearer(deployment: Deployment, tenant: str) -> dict[str, str]:
    _, secret = deployment.keys.create(tenant)
    return {"Authorization": f"Bearer {secret}"}


def guests(n: int, wedding: str = "w42") -> dict[str, Any]:
    template = TEMPLATE | {"wedding": TEMPLATE["wedding"] | {"wedding_id": wedding}}
    recipients = [{"to": f"guest{i}@example.org", "variables": {"name": f"G{i}"}}
                  for i in range(n)]  # fmt: skip
    return {"template": template, "recipients": recipients}


async def deliver(broker: Broker, port: int) -> None:
    """One worker until nothing is ready (the sink's refusals are final: nothing retries)."""
    provider = SmtpProvider(SmtpSettings(port=port, pool_size=4))
    worker = Worker(broker, provider, WorkerSettings(batch_size=100))
    while jobs := await asyncio.to_thread(broker.lease, worker.name, 100, 30):
        await worker.process(jobs)
    await provider.close()


async def test_a_500_guest_batch_counts_its_bounces_and_retries_only_the_dead(
    deployment: Deployment,
    client: httpx.AsyncClient,
    sink: tuple[SmtpSink, BouncingSink],
) -> None:
    server, handler = sink
    handler.bouncing = {f"guest{i}@example.org" for i in range(0, 500, 20)}  # 5 %: 25
    acme = bearer(deployment, "acme")
    accepted = await client.post("/v1/emails/batch", json=guests(500), headers=acme)
    assert accepted.status_code == 202, accepted.text
    batch_id, ids = accepted.json()["batch_id"], accepted.json()["ids"]
    assert accepted.headers["location"] == f"/v1/batches/{batch_id}" and len(ids) == 500
    assert deployment.broker.get(ids[0]).batch_id == batch_id  # type: ignore[union-attr]

    await deliver(deployment.broker, server.port)
    status = (await client.get(f"/v1/batches/{batch_id}", headers=acme)).json()
    assert status["total"] == 500 and status["wedding_id"] == "w42"
    assert status["counts"]["sent"] == 475 and status["counts"]["dead"] == 25
    assert status["lanes"] == {"bulk": {"sent": 475, "dead": 25}}
    assert status["first_delivered_at"] <= status["last_delivered_at"]
    assert status["complete"] is True
    dead = (await client.get(f"/v1/batches/{batch_id}?state=dead&limit=1000", headers=acme)).json()
    dead_addresses = {address for r in dead["recipients"] for address in r["to"]}
    assert dead_addresses == handler.bouncing
    assert all("550" in r["last_error"] for r in dead["recipients"])

    handler.bouncing.clear()  # the guests fixed their addresses
    handler.accepted.clear()
    retried = await client.post(f"/v1/batches/{batch_id}/retry", headers=acme)
    assert retried.status_code == 202 and retried.json()["count"] == 25
    assert set(retried.json()["ids"]) == {r["id"] for r in dead["recipients"]}
    await deliver(deployment.broker, server.port)
    assert sorted(handler.accepted) == sorted(dead_addresses)  # only the dead, once each

    status = (await client.get(f"/v1/batches/{batch_id}", headers=acme)).json()
    assert (status["total"], status["counts"]["sent"], status["counts"]["dead"]) == (500, 500, 0)
    assert status["retried"] == 25
    again = await client.post(f"/v1/batches/{batch_id}/retry", headers=acme)
    assert again.status_code == 409 and "nothing" in again.json()["detail"]


async def test_recipients_are_paginated_and_filtered_by_state(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme = bearer(deployment, "acme")
    batch_id = (await client.post("/v1/emails/batch", json=guests(25), headers=acme)).json()[
        "batch_id"
    ]
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": 10} | ({"after": after} if after else {})
        page = (await client.get(f"/v1/batches/{batch_id}", params=params, headers=acme)).json()
        seen += [r["to"][0] for r in page["recipients"]]
        assert all(r["state"] == "queued" and r["attempts"] == 0 for r in page["recipients"])
        if (after := page["next"]) is None:
            break
    assert seen == [f"guest{i}@example.org" for i in range(25)]
    none = await client.get(f"/v1/batches/{batch_id}?state=sent", headers=acme)
    assert none.json()["recipients"] == [] and none.json()["counts"]["queued"] == 25


async def test_cancel_takes_what_no_worker_holds(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme = bearer(deployment, "acme")
    batch_id = (await client.post("/v1/emails/batch", json=guests(30), headers=acme)).json()[
        "batch_id"
    ]
    held = deployment.broker.lease("w1", 5, 30)
    cancelled = await client.delete(f"/v1/batches/{batch_id}", headers=acme)
    assert cancelled.status_code == 200
    assert cancelled.json() == {"batch_id": batch_id, "cancelled": 25, "not_cancelled": 5}
    status = (await client.get(f"/v1/batches/{batch_id}", headers=acme)).json()
    assert (status["counts"]["cancelled"], status["counts"]["leased"]) == (25, 5)
    deployment.broker.complete(held)
    events = deployment.broker.events(status["recipients"][-1]["id"])
    assert events[-1].kind == "cancelled"  # the audit trail says so


async def test_batches_are_the_callers_tenants_alone(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme, other = bearer(deployment, "acme"), bearer(deployment, "other")
    batch_id = (await client.post("/v1/emails/batch", json=guests(3), headers=acme)).json()[
        "batch_id"
    ]
    await client.post("/v1/emails/batch", json=guests(2, wedding="w7"), headers=acme)
    await client.post("/v1/emails/batch", json=guests(2), headers=other)
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/retry")):
        refused = await client.request(method, f"/v1/batches/{batch_id}{path}", headers=other)
        assert refused.status_code == 404, (method, path)  # not 403: ids do not leak
    assert (await client.get("/v1/batches/b_nope", headers=acme)).status_code == 404
    listed = (await client.get("/v1/batches", headers=acme)).json()["batches"]
    assert len(listed) == 2
    w42 = (await client.get("/v1/batches?wedding_id=w42", headers=acme)).json()["batches"]
    assert [b["batch_id"] for b in w42] == [batch_id] and w42[0]["accepted"] == 3
    assert deployment.broker.stats("acme").backlog == 5  # nothing was cancelled by "other"


async def test_bad_input_names_the_field(deployment: Deployment, client: httpx.AsyncClient) -> None:
    acme = bearer(deployment, "acme")
    batch_id = (await client.post("/v1/emails/batch", json=guests(2), headers=acme)).json()[
        "batch_id"
    ]
    for query, field in (("state=bogus", "state"), ("limit=0", "limit"), ("limit=x", "limit")):
        refused = await client.get(f"/v1/batches/{batch_id}?{query}", headers=acme)
        assert refused.status_code == 422, query
        assert field in refused.text, query
    nothing_dead = await client.post(f"/v1/batches/{batch_id}/retry", headers=acme)
    assert nothing_dead.status_code == 409


async def test_a_repeated_batch_request_names_the_same_batch(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme = bearer(deployment, "acme") | {"Idempotency-Key": "invites-w42"}
    first = (await client.post("/v1/emails/batch", json=guests(4), headers=acme)).json()
    again = (await client.post("/v1/emails/batch", json=guests(4), headers=acme)).json()
    assert (again["batch_id"], again["ids"]) == (first["batch_id"], first["ids"])
    assert deployment.broker.stats().backlog == 4


def test_the_broker_indexes_a_batchs_messages(broker: Broker) -> None:
    payload = parse_email(
        {"from": "a@weddings.example", "to": "b@example.org", "subject": "Hi", "text": "x"}
    ).to_payload()
    ids = broker.enqueue_many(
        [NewMessage(payload, batch_id="b_1") for _ in range(3)] + [NewMessage(payload)]
    )
    members = broker.batch_members("b_1")
    assert [m.info.id for m in members] == ids[:3]
    assert all(m.payload == payload and m.info.batch_id == "b_1" for m in members)
    assert broker.get(ids[3]).batch_id is None  # type: ignore[union-attr]
    assert broker.batch_members("b_2") == []
    assert sorted(broker.cancel_many(ids)) == sorted(ids)
    assert {m.info.state for m in broker.batch_members("b_1")} == {State.CANCELLED}
    assert broker.cancel_many(ids) == []
