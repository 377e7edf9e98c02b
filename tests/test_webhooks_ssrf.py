"""SSRF beyond literal addresses (issue 16): names that resolve inward, a name pointed inward
after registration (checked on the connection itself, which goes to the address checked),
TLS that still names the host, and URLs that answer with a redirect.

Names under ``.emailq.test`` resolve through a resolver each test passes (the system's
cannot resolve them: the reserved ``.test`` domain), so a delivery that reaches the receiver
went to the address that resolver gave, not to one the system looked up on its own.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deployments import deployment_for
from emailq.api import create_app
from emailq.deployment import Deployment
from emailq.sink import free_port
from emailq.webhooks import service
from emailq.webhooks.probe import check_receiver
from emailq.webhooks.sender import Sender
from emailq.webhooks.ssrf import Address, UrlRefused, check_url, resolve_host
from emailq.webhooks.store import DeliveryState, Endpoint
from test_batches import bearer, guests
from webhook_receiver import running_receiver

pytestmark = pytest.mark.anyio
NAME = "hooks.emailq.test"
LOOPBACK = ipaddress.ip_address("127.0.0.1")
PUBLIC = ipaddress.ip_address("93.184.215.14")


class Resolver:
    """Answers ``answers`` in turn for NAME (the last one again after), and records each
    lookup: what a DNS server that changes its mind looks like."""

    def __init__(self, *answers: list[Address]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[Address]:
        with self.lock:
            self.lookups.append(host)
            if host != NAME:
                return resolve_host(host, port)
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url, webhooks={"allow_private_urls": True, "poll_s": 0.05}) as d:
        yield d


async def cancelled_events(deployment: Deployment, client: httpx.AsyncClient, n: int) -> None:
    """``n`` email.cancelled events for tenant acme (a batch queued, then cancelled)."""
    acme = bearer(deployment, "acme")
    batch = (await client.post("/v1/emails/batch", json=guests(n), headers=acme)).json()
    assert (await client.delete(f"/v1/batches/{batch['batch_id']}", headers=acme)).is_success


def endpoint_for(deployment: Deployment, url: str) -> Endpoint:
    """Stored as registration stores it (registration's own checks are tested apart)."""
    endpoint = Endpoint(id="wh_pinned", tenant="acme", url=url, events=("email.cancelled",),
                        secret="whsec_" + "A" * 32, created_at=0.0)  # fmt: skip
    deployment.webhooks.add_endpoint(endpoint)
    return endpoint


@pytest.fixture
async def sending(deployment: Deployment) -> AsyncIterator[list[Sender]]:
    """Runs the dispatcher and the Sender the test appends (started once it has one)."""
    senders: list[Sender] = []
    stop = asyncio.Event()

    async def run() -> None:
        while not senders:
            await asyncio.sleep(0.01)
        webhooks = deployment.settings.webhooks
        await service.run(deployment.broker, deployment.webhooks, webhooks, stop, senders[0])

    task = asyncio.create_task(run())
    yield senders
    stop.set()
    await task


async def settled(deployment: Deployment, endpoint_id: str, n: int) -> dict[str, list[str]]:
    """Each state's last errors once ``n`` deliveries are no longer pending."""
    for _ in range(400):
        found = deployment.webhooks.deliveries(endpoint_id, None, 1000)
        if len(found) == n and all(d.state is not DeliveryState.PENDING for d in found):
            break
        await asyncio.sleep(0.05)
    by_state: dict[str, list[str]] = {}
    for delivery in found:
        by_state.setdefault(delivery.state.value, []).append(delivery.last_error or "")
    return by_state


# -- registration --------------------------------------------------------------------------


def test_the_system_cannot_resolve_the_test_names() -> None:
    """What makes the delivery tests below mean something."""
    with pytest.raises(UrlRefused, match="does not resolve"):
        resolve_host(NAME, 80)


async def test_a_name_resolving_inward_is_refused_at_registration(broker_url: str) -> None:
    with deployment_for(broker_url) as deployment:  # the default: private URLs refused
        transport = httpx.ASGITransport(app=create_app(deployment))
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            refused = await client.post(
                "/v1/webhooks", json={"url": "http://localhost/hooks", "events": ["email.sent"]},
                headers=bearer(deployment, "acme"),
            )  # fmt: skip
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert error["field"] == "url"
    assert error["message"].startswith("localhost is ") and "internal address" in error["message"]
    for answer in ([LOOPBACK], [PUBLIC, ipaddress.ip_address("10.0.0.7")],
                   [ipaddress.ip_address("fd00::1")]):  # fmt: skip
        with pytest.raises(UrlRefused, match="internal address"):
            await check_receiver(f"https://{NAME}/hooks", False, Resolver(answer))


async def test_a_url_that_redirects_inward_is_refused_with_a_422(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    """The loopback receiver needs the allow flag; the redirect is refused all the same,
    and where it leads is judged as if the flag were off."""
    acme = bearer(deployment, "acme")
    with running_receiver() as receiver:
        receiver.redirect_to = "http://127.0.0.1/latest/meta-data/"
        refused = await client.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["email.sent"]}, headers=acme
        )
        assert refused.status_code == 422
        [error] = refused.json()["errors"]
        assert error["field"] == "url"
        message = error["message"]
        assert message.startswith("answers 307, a redirect to http://127.0.0.1/latest/meta-data/")
        assert "internal address" in message and "redirects are never followed" in message
        assert (receiver.probes, receiver.requests) == (1, 0)  # a GET; nothing posted
    assert (await client.get("/v1/webhooks", headers=acme)).json()["webhooks"] == []


async def test_any_redirect_is_refused_and_a_receiver_that_is_down_is_registered(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    acme = bearer(deployment, "acme")
    with running_receiver() as receiver:
        receiver.redirect_to = "https://93.184.215.14/hooks"  # public: still never followed
        refused = await client.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["email.sent"]}, headers=acme
        )
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert error["message"].startswith("answers 307, a redirect to https://93.184.215.14/hooks;")
    down = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens: its deliveries will wait
    created = await client.post("/v1/webhooks", json={"url": down, "events": ["email.sent"]},
                                headers=acme)  # fmt: skip
    assert created.status_code == 201, created.text


# -- delivery ------------------------------------------------------------------------------


async def test_a_delivery_connects_to_the_address_its_lookup_gave_with_the_host_named(
    deployment: Deployment, client: httpx.AsyncClient, sending: list[Sender]
) -> None:
    resolver = Resolver([LOOPBACK])
    with running_receiver(host=NAME) as receiver:
        endpoint = endpoint_for(deployment, receiver.url)
        receiver.secret = endpoint.secret
        sending.append(Sender(deployment.webhooks, allow_private=True, resolve=resolver))
        await cancelled_events(deployment, client, 5)
        assert await asyncio.to_thread(receiver.wait_for, 5, 30)
    assert receiver.hosts == {f"{NAME}:{receiver.port}"} and receiver.bad_signatures == 0
    assert set(resolver.lookups) == {NAME}
    assert 1 <= len(resolver.lookups) <= 5  # once per connection opened, not per request


async def test_a_name_pointed_inward_after_registration_is_never_connected_to(
    deployment: Deployment, client: httpx.AsyncClient, sending: list[Sender]
) -> None:
    """Public when registered, 127.0.0.1 by the time of delivery: the address the
    connection would use is the one refused, and the receiver sees nothing."""
    resolver = Resolver([PUBLIC], [LOOPBACK])
    with running_receiver(host=NAME) as receiver:
        check_url(receiver.url, allow_private=False, resolve=resolver)  # registration's check
        endpoint = endpoint_for(deployment, receiver.url)
        sending.append(Sender(deployment.webhooks, allow_private=False, resolve=resolver))
        await cancelled_events(deployment, client, 3)
        outcome = await settled(deployment, endpoint.id, 3)
    assert list(outcome) == ["failed"] and len(outcome["failed"]) == 3
    assert all(
        e.startswith(f"refused: {NAME} is 127.0.0.1, an internal") for e in outcome["failed"]
    )
    assert receiver.requests == 0 and receiver.probes == 0


def tls_for(host: str, tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``host`` only (no IP address in it), and a
    client context trusting the CA that signed it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emailq test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_tls_asks_for_and_verifies_the_host_name_on_the_pinned_connection(
    deployment: Deployment, client: httpx.AsyncClient, sending: list[Sender], tmp_path: Path
) -> None:
    server_tls, client_tls = tls_for(NAME, tmp_path)
    with running_receiver(host=NAME, tls=server_tls) as receiver:
        endpoint = endpoint_for(deployment, receiver.url)
        receiver.secret = endpoint.secret
        sending.append(Sender(deployment.webhooks, allow_private=True,
                              resolve=Resolver([LOOPBACK]), verify=client_tls))  # fmt: skip
        await cancelled_events(deployment, client, 2)
        assert await asyncio.to_thread(receiver.wait_for, 2, 30)
    assert receiver.url.startswith("https://") and receiver.bad_signatures == 0
    assert set(receiver.server_names) == {NAME}
