"""TLS everywhere (issue 13): a ``rediss://`` broker that asks for our client certificate
and an ``smtps://`` provider, both with certificates of a throwaway CA, deliver mail; a
wrong CA fails at once with an error that names the certificate, instead of a minute of
reconnecting. redis-server here is built with TLS (``--tls-port``)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from emailq.broker import State
from emailq.deployment import Deployment
from emailq.errors import BrokerUnavailable
from emailq.providers.base import Accepted, HealthCheck, Rendered, SendResult, Transient
from emailq.providers.factory import open_provider
from emailq.sink import SinkHandler, SmtpSink, free_port
from emailq.worker import Worker
from faults import copies, invitations, wait_until
from tlsfiles import TlsFiles, make_ca

pytestmark = pytest.mark.redis
RENDERED = Rendered("m1", "planner@weddings.example", ("guest@example.org",),
                    b"X-Emailq-Id: m1\r\nSubject: hi\r\n\r\nhello\r\n")  # fmt: skip


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_ca(tmp_path_factory.mktemp("other-ca"), "somebody else's CA")


@pytest.fixture
def tls_redis(redis_server: str, ca: TlsFiles, tmp_path: Path) -> Iterator[int]:
    """A redis-server listening on TLS only, asking every client for a certificate."""
    port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--dir", str(tmp_path), "--maxmemory-policy", "noeviction",
         "--tls-cert-file", str(ca.server_cert), "--tls-key-file", str(ca.server_key),
         "--tls-ca-cert-file", str(ca.ca), "--tls-auth-clients", "yes"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    probe = redis.Redis(
        port=port, ssl=True, ssl_ca_certs=str(ca.ca), socket_timeout=1,
        ssl_certfile=str(ca.client_cert), ssl_keyfile=str(ca.client_key),
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(probe), 10, "redis-server to listen on TLS")
        yield port
    finally:
        server.kill()
        server.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def smtps_sink(ca: TlsFiles) -> Iterator[SmtpSink]:
    """The built-in sink behind implicit TLS (port 465 style)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    with SmtpSink(ssl_context=context) as sink:
        yield sink


def rediss_url(port: int, ca: Path, client: TlsFiles) -> str:
    return (f"rediss://127.0.0.1:{port}/0?prefix=tls-{uuid.uuid4().hex[:8]}&ssl_ca_certs={ca}"
            f"&ssl_certfile={client.client_cert}&ssl_keyfile={client.client_key}")  # fmt: skip


def test_a_rediss_broker_and_an_smtps_provider_deliver_mail(
    tls_redis: int, smtps_sink: SmtpSink, ca: TlsFiles
) -> None:
    provider = f"smtps://127.0.0.1:{smtps_sink.port}?ca_file={ca.ca}&pool=2"
    with Deployment.from_url(rediss_url(tls_redis, ca.ca, ca), provider={"url": provider}) as d:
        ids = d.broker.enqueue_many(invitations(20))

        async def deliver() -> None:
            sender = d.open_provider()
            worker = Worker(d.broker, sender, d.worker_settings())
            while jobs := await asyncio.to_thread(d.broker.lease, worker.name, 10, 30):
                await worker.process(jobs)
            await sender.close()

        asyncio.run(deliver())
        assert d.status().count(State.SENT) == len(ids)
        d.broker.purge()
    assert sorted(copies(smtps_sink)) == sorted(ids)


@pytest.mark.timeout(20)  # a certificate error must not ride out the minute of reconnecting
def test_a_redis_certificate_from_the_wrong_ca_fails_at_once_naming_it(
    tls_redis: int, ca: TlsFiles, other_ca: TlsFiles
) -> None:
    d = Deployment.from_url(rediss_url(tls_redis, other_ca.ca, ca))
    with d, pytest.raises(BrokerUnavailable, match="certificate") as refused:
        d.broker.enqueue_many(invitations(1))
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "ssl_ca_certs" in str(refused.value)  # what to check


@pytest.mark.timeout(20)
def test_an_smtps_certificate_from_the_wrong_ca_is_refused_naming_it(
    smtps_sink: SmtpSink, other_ca: TlsFiles
) -> None:
    provider = open_provider(f"smtps://127.0.0.1:{smtps_sink.port}?ca_file={other_ca.ca}")

    async def attempt() -> tuple[HealthCheck, SendResult]:
        try:
            return (await provider.check(), (await provider.send_batch([RENDERED]))[0])
        finally:
            await provider.close()

    check, result = asyncio.run(attempt())
    assert not check.ok and "CERTIFICATE_VERIFY_FAILED" in check.reason
    assert isinstance(result, Transient) and result.provider_down  # the provider, not the mail
    assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert smtps_sink.count == 0


def test_the_system_cas_are_used_when_none_is_given(smtps_sink: SmtpSink) -> None:
    """Verification is on by default: our throwaway CA is nobody's trust anchor."""
    provider = open_provider(f"smtps://127.0.0.1:{smtps_sink.port}")
    check = asyncio.run(provider.check())
    assert not check.ok and "CERTIFICATE_VERIFY_FAILED" in check.reason


@pytest.fixture
def starttls_sink(ca: TlsFiles) -> Iterator[SinkHandler]:
    """aiosmtpd offering STARTTLS, refusing mail before it (and AUTH in clear)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    handler, port = SinkHandler(), free_port()
    server = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
        authenticator=lambda *_: AuthResult(success=True),
    )  # fmt: skip
    server.start()
    handler.port = port  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.stop()


@pytest.mark.timeout(20)
def test_starttls_verifies_the_relay_and_then_logs_in(
    starttls_sink: SinkHandler, ca: TlsFiles, other_ca: TlsFiles
) -> None:
    base = f"smtp://mailer:pw@127.0.0.1:{starttls_sink.port}?starttls=auto"  # type: ignore[attr-defined]

    async def send(url: str) -> tuple[HealthCheck, SendResult]:
        provider = open_provider(url)
        try:
            return (await provider.check(), (await provider.send_batch([RENDERED]))[0])
        finally:
            await provider.close()

    # The login goes over the upgraded connection (emailq used to look for the TLS under a
    # name asyncio does not use, and refused every password over STARTTLS or smtps://).
    check, result = asyncio.run(send(f"{base}&ca_file={ca.ca}"))
    assert check.ok, check.reason
    assert isinstance(result, Accepted) and len(starttls_sink.deliveries) == 1
    check, result = asyncio.run(send(f"{base}&ca_file={other_ca.ca}"))
    assert not check.ok and "CERTIFICATE_VERIFY_FAILED" in check.reason
    assert isinstance(result, Transient) and result.provider_down
    assert len(starttls_sink.deliveries) == 1  # nothing more, and no password went out
