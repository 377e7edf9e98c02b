"""Erasure by recipient: after it, no table, key or log line holds the address or a body
naming it, while the audit trail still tells every message's story by the address's hash."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest

from deployments import deployment_for
from emailq.api.app import create_app
from emailq.broker import State
from emailq.deployment import Deployment
from emailq.logs import RedactSecrets
from emailq.privacy.audit import Kind
from emailq.sink import SmtpSink
from faults import deliver
from stores import dump, sqlite_files

GUEST = "Rosalind.Guest@Example.org"
BODY = "Table 7 beside the cellist, the gluten-free menu as asked"
SECRET = "test-hash-secret-7f3a"


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url, privacy={"hash_secret": SECRET}) as opened:
        yield opened


def email(to: str, subject: str, **extra: object) -> dict[str, object]:
    return {"from": "planner@weddings.example", "to": to, "subject": subject,
            "text": f"{BODY} ({subject})", "tenant": "acme"} | extra  # fmt: skip


def needles(text: str) -> list[bytes]:
    return [text.encode(), text.lower().encode()]


def test_erasure_leaves_no_address_or_body_but_the_trail_by_hash(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RedactSecrets(deployment.settings.secrets()))
    caplog.set_level(logging.INFO)  # as emailq runs (aiosmtpd, the sink, logs data at DEBUG)
    caplog.set_level(logging.DEBUG, logger="emailq")
    broker = deployment.broker
    sent = deployment.send(email(GUEST, "your table", cc=["other@example.org"]))
    with SmtpSink() as sink:
        deliver(broker, sink.port)
    queued = deployment.send(email(GUEST, "ceremony moved"), idempotency_key=f"moved-{GUEST}")
    later = deployment.send(email(GUEST.lower(), "thank you", send_at="2099-01-01T00:00:00Z"))
    kept = deployment.send(email("someone.else@example.org", "kept", text="Another guest"))
    assert broker.get(sent.id).state is State.SENT  # type: ignore[union-attr]

    counts = deployment.erase(GUEST)
    # The sent one held nothing left to erase: its body and recipients went when it was sent.
    assert (counts.messages, counts.cancelled, counts.erased, counts.idempotency_keys) == (
        3,
        2,
        2,
        1,
    )
    again = deployment.erase(GUEST)
    assert (again.cancelled, again.erased, again.idempotency_keys, again.in_flight) == (0, 0, 0, 0)

    held = dump(broker)
    for needle in [*needles(GUEST), *needles(BODY)[:1]]:
        for what in ("your table", "ceremony moved", "thank you"):
            assert f"{BODY} ({what})".encode() not in held
        assert needle not in held, needle
    assert b"someone.else@example.org" in held  # only what names the address goes
    for record in caplog.records:
        line = caplog.handler.format(record)
        assert GUEST.lower() not in line.lower() and BODY not in line
    if broker.__class__.__name__ == "SQLiteBroker":  # deleted bytes are zeroed, WAL truncated
        raw = sqlite_files(broker.path)  # type: ignore[attr-defined]
        assert GUEST.lower().encode() not in raw.lower() and BODY.encode() not in raw

    guest_hash = deployment.hasher.hash(GUEST)
    for message_id in (sent.id, queued.id, later.id):
        events = broker.events(message_id)
        assert events[0].kind is Kind.ACCEPTED and guest_hash in events[0].detail["rcpt"]
    for message_id in (queued.id, later.id):
        assert broker.events(message_id)[-1].detail == {"rcpt": guest_hash}
        assert [e.kind for e in broker.events(message_id)][-2:] == [Kind.CANCELLED, Kind.ERASED]
    assert [e.kind for e in broker.events(sent.id)] == [
        Kind.ACCEPTED, Kind.LEASED, Kind.ATTEMPT, Kind.SENT
    ]  # fmt: skip
    assert Kind.CANCELLED in [e.kind for e in broker.events(queued.id)]
    assert broker.get(kept.id).state is State.QUEUED  # type: ignore[union-attr]
    # The idempotency key is forgotten: the same key queues a new email now.
    again_id = deployment.send(email("x@example.org", "new"), idempotency_key=f"moved-{GUEST}")
    assert again_id.id != queued.id


def test_erasure_is_scoped_to_a_tenant(deployment: Deployment) -> None:
    mine = deployment.send(email(GUEST, "a"))
    theirs = deployment.send(email(GUEST, "b", tenant="globex"))
    assert deployment.erase(GUEST, tenant="globex").cancelled == 1
    assert deployment.broker.get(mine.id).state is State.QUEUED  # type: ignore[union-attr]
    assert deployment.broker.get(theirs.id).state is State.CANCELLED  # type: ignore[union-attr]
    held = deployment.export(GUEST)
    assert held["recipient_hash"] == deployment.hasher.hash(GUEST)
    assert {m["id"] for m in held["messages"]} == {mine.id, theirs.id}


def test_the_erasure_route_is_tenant_scoped_and_checks_the_address(
    deployment: Deployment,
) -> None:
    _, key = deployment.keys.create("acme")
    _, operator = deployment.keys.create("ops", operator=True)
    deployment.send(email(GUEST, "a"))
    theirs = deployment.send(email(GUEST, "b", tenant="globex"))
    asyncio.run(_erase_through_the_api(deployment, key, operator, theirs.id))


async def _erase_through_the_api(
    deployment: Deployment, key: str, operator: str, theirs: str
) -> None:
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
        auth = {"Authorization": f"Bearer {key}"}
        bad = await client.post("/v1/erasure", json={"recipient": "not an address"}, headers=auth)
        assert bad.status_code == 422 and "recipient" in bad.text
        refused = await client.post("/v1/erasure", json={"recipient": GUEST, "tenant": "globex"},
                                    headers=auth)  # fmt: skip
        assert refused.status_code == 403
        done = (await client.post("/v1/erasure", json={"recipient": GUEST}, headers=auth)).json()
        assert (done["tenant"], done["cancelled"]) == ("acme", 1)
        assert deployment.broker.get(theirs).state is State.QUEUED  # type: ignore[union-attr]
        everyone = (await client.post("/v1/erasure", json={"recipient": GUEST},
                    headers={"Authorization": f"Bearer {operator}"})).json()  # fmt: skip
        assert (everyone["tenant"], everyone["cancelled"]) == (None, 1)
        events = await client.get(f"/v1/emails/{theirs}/events", headers=auth)
        assert events.status_code == 404  # another tenant's email
