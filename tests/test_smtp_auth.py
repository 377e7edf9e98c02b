"""SMTP AUTH only over TLS: a password never crosses the network in clear unless asked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from emailq.providers import Accepted, Rendered, Transient
from emailq.providers.factory import open_provider
from emailq.sink import SinkHandler, free_port


class Recorder:
    """An authenticator that writes down every password it is shown."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 data: Any) -> AuthResult:  # fmt: skip
        if isinstance(data, LoginPassword):
            self.seen.append(data.password)
        return AuthResult(success=True)


@pytest.fixture
def plaintext_server() -> Iterator[tuple[int, Recorder]]:
    """A server that offers AUTH but no STARTTLS (a sniffer's dream)."""
    recorder = Recorder()
    port = free_port()
    controller = Controller(SinkHandler(), hostname="127.0.0.1", port=port,
                            auth_require_tls=False, authenticator=recorder)  # fmt: skip
    controller.start()
    yield port, recorder
    controller.stop()


MESSAGE = Rendered("01auth", "a@example.org", ("b@example.org",),
                   b"Subject: hi\r\nX-Emailq-Id: 01auth\r\n\r\nhello\r\n")  # fmt: skip


def send(url: str) -> object:
    async def run() -> object:
        provider = open_provider(url)
        try:
            [result] = await provider.send_batch([MESSAGE])
            return result
        finally:
            await provider.close()

    return asyncio.run(run())


def test_a_password_is_not_sent_without_tls(plaintext_server: tuple[int, Recorder]) -> None:
    port, recorder = plaintext_server
    result = send(f"smtp://alice:secret-pw@127.0.0.1:{port}")
    assert isinstance(result, Transient) and result.provider_down
    assert "no TLS" in result.reason and "secret-pw" not in result.reason
    assert recorder.seen == []  # the server never saw the password


def test_plaintext_auth_when_the_operator_allows_it(
    plaintext_server: tuple[int, Recorder],
) -> None:
    port, recorder = plaintext_server
    result = send(f"smtp://alice:secret-pw@127.0.0.1:{port}?auth=plaintext")
    assert isinstance(result, Accepted)
    assert recorder.seen == [b"secret-pw"]
