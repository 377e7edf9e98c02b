"""An httpx client for receivers that connects only to addresses it has checked: the
registration probe's (webhooks/probe.py; deliveries go through webhooks/poster.py).

Checking a URL's host and then letting the HTTP client resolve it again leaves a window: a
name can answer a public address to the check and 127.0.0.1 to the connection (DNS
rebinding). Here the lookup, the check and the connection are one step: the client's
network backend resolves the host itself, refuses it unless every address is public (or
the settings allow private ones), and connects to those addresses by number. The URL is
untouched, so the Host header, TLS SNI and certificate checks still name the host. A
connection kept alive stays with the address it was opened to.

Redirects are never followed, and proxies from the environment are not used (a proxy
would do its own lookup).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

import anyio.to_thread
import httpcore
import httpx

from emailq.webhooks.ssrf import Address, Resolver, checked_addresses, resolve_host

SocketOption = (  # httpcore's SOCKET_OPTION
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, allow_private: bool, resolve: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolve = resolve or resolve_host
        self.inner = httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int) -> list[Address]:
        """``host``'s addresses, checked (raises ``UrlRefused``, which httpx passes on)."""
        if self.allow_private:
            return await anyio.to_thread.run_sync(self.resolve, host, port)
        return await anyio.to_thread.run_sync(checked_addresses, host, port, self.resolve)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in await self.addresses(host, port):
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error  # the next address, as a resolver's caller would
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("receivers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: PinnedBackend, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(verify=verify, trust_env=False)
        limits = httpx.Limits()  # httpx's defaults
        # httpx takes no network backend of its own; this is its pool with ours (httpx is
        # pinned in pyproject.toml, and tests/test_webhooks_ssrf.py sees the pool used).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def pinned_client(
    allow_private: bool,
    timeout_s: float,
    resolve: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """``verify``: a context trusting a test CA, in tests; else the system's roots."""
    transport = PinnedTransport(PinnedBackend(allow_private, resolve), verify)
    return httpx.AsyncClient(
        transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
    )
