"""Signed event webhooks (issue 16): a real receiver that verifies each signature, the
dispatcher and sender running beside a worker that delivers to the SMTP sink; both brokers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from standardwebhooks import Webhook

from deployments import deployment_for
from emailq.api import create_app
from emailq.broker import Action, Broker, NewMessage, Outcome
from emailq.clock import ManualClock
from emailq.deployment import Deployment
from emailq.message import parse_email
from emailq.webhooks import service
from emailq.webhooks.sender import Sender
from emailq.webhooks.signing import new_secret, signed_headers
from emailq.webhooks.ssrf import UrlRefused, check_url
from test_batches import BouncingSink, bearer, deliver, guests
from webhook_receiver import Receiver, running_receiver, verify

pytestmark = pytest.mark.anyio
ALL = ["email.sent", "email.failed", "email.dead", "email.cancelled", "batch.completed"]
FAST = {"allow_private_urls": True, "poll_s": 0.05}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url, webhooks=FAST) as opened:
        yield opened


@pytest.fixture
async def webhooks_running(deployment: Deployment) -> AsyncIterator[None]:
    """``emailq webhooks``' loops, retrying from 0.2 s instead of 5 s."""
    stop = asyncio.Event()
    sender = Sender(deployment.webhooks, allow_private=True, retry_base_s=0.2, max_age_s=60)
    task = asyncio.create_task(
        service.run(deployment.broker, deployment.webhooks, deployment.settings.webhooks,
                    stop, sender)
    )  # fmt: skip
    yield
    stop.set()
    await task


async def register(
    client: httpx.AsyncClient, headers: dict[str, str], receiver: Receiver, events: list[str]
) -> str:
    created = await client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": events}, headers=headers
    )
    assert created.status_code == 201, created.text
    receiver.secret = created.json()["secret"]
    assert receiver.secret.startswith("whsec_")
    return str(created.json()["id"])


def test_signatures_verify_by_the_spec_and_by_its_reference_package() -> None:
    secret = new_secret()
    body = '{"type":"email.sent","data":{}}'
    headers = signed_headers(secret, "evt_1", 1_900_000_000, body)
    assert verify(secret, headers, body.encode(), tolerance_s=10**10)
    assert not verify(new_secret(), headers, body.encode(), tolerance_s=10**10)
    now = signed_headers(secret, "evt_1", time.time(), body)
    assert Webhook(secret).verify(body, now) == {"type": "email.sent", "data": {}}


async def test_a_batch_s_outcomes_arrive_signed_once_each_with_batch_completed(
    deployment: Deployment, client: httpx.AsyncClient, receiver: Receiver,
    webhooks_running: None,
) -> None:  # fmt: skip
    from emailq.sink import SmtpSink

    handler = BouncingSink()
    handler.bouncing = {f"guest{i}@example.org" for i in range(0, 500, 20)}
    acme = bearer(deployment, "acme")
    endpoint_id = await register(client, acme, receiver, ALL)
    other = bearer(deployment, "other")
    await client.post("/v1/emails/batch", json=guests(5), headers=other)  # not acme's: not told
    accepted = (await client.post("/v1/emails/batch", json=guests(500), headers=acme)).json()
    with SmtpSink(handler=handler) as sink:
        await deliver(deployment.broker, sink.port)
    assert await asyncio.to_thread(receiver.wait_for, 1, 30, "batch.completed")
    assert await asyncio.to_thread(receiver.wait_for, 501, 30)
    assert receiver.bad_signatures == 0
    sent, dead = receiver.of_type("email.sent"), receiver.of_type("email.dead")
    assert (len(sent), len(dead)) == (475, 25)
    per_message = Counter(e["data"]["id"] for e in sent + dead)
    assert set(per_message) == set(accepted["ids"]) and set(per_message.values()) == {1}
    assert all(e["data"]["batch_id"] == accepted["batch_id"] for e in sent + dead)
    assert "550" in dead[0]["data"]["error"]
    [completed] = receiver.of_type("batch.completed")
    assert completed["data"]["counts"]["sent"] == 475 and completed["data"]["total"] == 500
    # The sender records an attempt once its answer is in, in groups: the receiver may
    # hold the last event a moment before its delivery is written down.
    for _ in range(100):
        listed = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries?limit=1000", headers=acme)
        states = Counter(d["state"] for d in listed.json()["deliveries"])
        if states == {"delivered": 501}:
            break
        await asyncio.sleep(0.1)
    assert states == {"delivered": 501}
    assert (
        await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=other)
    ).status_code == 404


async def test_a_receiver_that_is_down_gets_every_event_when_it_returns(
    deployment: Deployment, client: httpx.AsyncClient, receiver: Receiver,
    webhooks_running: None,
) -> None:  # fmt: skip
    acme = bearer(deployment, "acme")
    endpoint_id = await register(client, acme, receiver, ["email.cancelled"])
    receiver.status = 503
    batch_id = (await client.post("/v1/emails/batch", json=guests(20), headers=acme)).json()[
        "batch_id"
    ]
    await client.delete(f"/v1/batches/{batch_id}", headers=acme)
    while receiver.requests < 3:  # probes, one at a time, paused in between
        await asyncio.sleep(0.05)
    assert receiver.events == {}
    for _ in range(200):  # the sender records a failed try just after the receiver answers
        pending = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=acme)
        if "HTTP 503" in {d["last_error"] for d in pending.json()["deliveries"]}:
            break
        await asyncio.sleep(0.05)
    assert {d["state"] for d in pending.json()["deliveries"]} == {"pending"}
    assert "HTTP 503" in {d["last_error"] for d in pending.json()["deliveries"]}
    assert receiver.requests < 20  # not one request per event: the receiver is paused
    receiver.status = 200
    assert await asyncio.to_thread(receiver.wait_for, 20, 30)
    assert receiver.bad_signatures == 0 and len(receiver.of_type("email.cancelled")) == 20


async def test_a_delivery_is_failed_after_its_age_and_redirects_are_not_followed(
    deployment: Deployment, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    acme = bearer(deployment, "acme")
    endpoint_id = await register(client, acme, receiver, ["email.cancelled"])
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    batch_id = (await client.post("/v1/emails/batch", json=guests(1), headers=acme)).json()[
        "batch_id"
    ]
    await client.delete(f"/v1/batches/{batch_id}", headers=acme)
    stop = asyncio.Event()
    sender = Sender(deployment.webhooks, allow_private=True, retry_base_s=0.1, max_age_s=0.5)
    running = service.run(
        deployment.broker, deployment.webhooks, deployment.settings.webhooks, stop, sender
    )
    task = asyncio.create_task(running)
    try:
        for _ in range(200):
            listed = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=acme)
            found = listed.json()["deliveries"]
            if found and found[0]["state"] == "failed":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    [failed] = found
    assert failed["state"] == "failed" and failed["attempts"] >= 2
    assert "redirects are not followed" in failed["last_error"]
    assert receiver.events == {}


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hooks", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
     "http://localhost:8080/", "http://10.1.2.3/", "http://[::ffff:127.0.0.1]/",
     "https://192.168.0.10/x"],
)  # fmt: skip
async def test_internal_receivers_are_refused(broker_url: str, url: str) -> None:
    with deployment_for(broker_url) as deployment:  # the default: private URLs refused
        transport = httpx.ASGITransport(app=create_app(deployment))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            refused = await client.post(
                "/v1/webhooks", json={"url": url, "events": ["email.sent"]},
                headers=bearer(deployment, "acme"),
            )  # fmt: skip
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert error["field"] == "url" and "internal address" in error["message"]


def test_a_url_must_be_http_and_public_unless_allowed() -> None:
    for url, reason in (("ftp://example.org/", "http"), ("http:///x", "host"),
                        ("http://u:p@example.org/", "credentials")):  # fmt: skip
        with pytest.raises(UrlRefused, match=reason):
            check_url(url)
    check_url("http://127.0.0.1:9/", allow_private=True)
    check_url("https://93.184.215.14/hooks")  # a public address: no DNS needed


async def test_bad_webhook_input_names_the_field(
    deployment: Deployment, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    acme = bearer(deployment, "acme")
    refused = await client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["email.sent", "email.opened"],
                              "extra": 1}, headers=acme)  # fmt: skip
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["errors"]} == {"events.1", "extra"}
    assert (await client.post("/v1/webhooks", json={"url": 5, "events": []},
                              headers=acme)).status_code == 422  # fmt: skip
    endpoint_id = await register(client, acme, receiver, ["email.sent"])
    listed = (await client.get("/v1/webhooks", headers=acme)).json()["webhooks"]
    assert [w["id"] for w in listed] == [endpoint_id] and "secret" not in listed[0]
    other = bearer(deployment, "other")
    assert (await client.delete(f"/v1/webhooks/{endpoint_id}", headers=other)).status_code == 404
    assert (await client.get(f"/v1/webhooks/{endpoint_id}/deliveries?state=x",
                             headers=acme)).status_code == 422  # fmt: skip
    assert (await client.delete(f"/v1/webhooks/{endpoint_id}", headers=acme)).status_code == 200


def test_the_feed_hands_out_outcomes_in_order_and_goes_with_the_trail(
    broker: Broker, clock: ManualClock
) -> None:
    payload = parse_email(
        {"from": "a@weddings.example", "to": "b@example.org", "subject": "Hi", "text": "x"}
    ).to_payload()
    first, second = broker.enqueue_many([NewMessage(payload, batch_id="b_1")] * 2)
    jobs = broker.lease("w", 10, 30)
    broker.settle([Outcome(jobs[0], Action.COMPLETE), Outcome(jobs[1], Action.RETRY, 60, "451")])
    fed = broker.events_after("")
    assert [(f.event.message_id, f.event.kind.value) for f in fed] == [
        (first, "sent"), (second, "retried")]  # fmt: skip
    assert {(f.tenant, f.batch_id) for f in fed} == {("default", "b_1")}
    assert broker.events_after(fed[0].cursor) == fed[1:]
    assert broker.events_after(fed[-1].cursor) == []
    clock.advance(broker.options.audit_retention + broker.options.retention + 10**7)
    broker.purge_expired()
    assert broker.events_after("") == []
