"""The sender's HTTP/1.1 client: one POST per event over keep-alive connections, several
in flight to a receiver at once, each on its own connection.

Why not httpx here: profiled, httpx and httpcore were ~80 % of the sender's CPU per event
(its pool checks every connection's socket on every request), and a webhook process that
costs 2 ms of CPU per event competes with the mail workers for the same cores. What a
webhook needs is small: POST a body, read the status, drop the reply's body, reuse the
connection. (The registration probe, one GET, still uses httpx: webhooks/pinned.py.)

SSRF, as webhooks/pinned.py does it: every connection this opens resolves the host itself,
checks every address (unless private ones are allowed) and connects to those by number;
the Host header, TLS SNI and the certificate check still name the host. No proxies, and a
redirect is an answer like any other (the sender never follows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from emailq.webhooks.ssrf import Address, Resolver, UrlRefused, checked_addresses, resolve_host

KEEPALIVE_S = 5.0  # an idle connection is closed after this (httpx's default too)
MAX_DRAINED = 64 * 1024  # a reply body larger than this is not read: the connection closes
USER_AGENT = "emailq-webhooks"


class PostFailed(Exception):
    """No HTTP answer: the receiver could not be reached, or broke off, or was too slow."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's POSTs go: the connection's key, and the request's first lines."""

    scheme: str
    host: str
    port: int
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: …\r\n…", without the per-event headers

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        named = f"[{host}]" if ":" in host else host
        authority = named if port == (443 if https else 80) else f"{named}:{port}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Content-Type: application/json\r\n"
        ).encode("ascii")
        return cls(parts.scheme, host, port, head)


@dataclass(slots=True)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self, now: float) -> bool:
        """Not closed by the receiver meanwhile (the loop has read its EOF), and not idle
        so long that it may be about to be."""
        return (
            now - self.idle_since < KEEPALIVE_S
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class Poster:
    def __init__(
        self,
        allow_private: bool,
        timeout_s: float,
        resolve: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.resolve = resolve or resolve_host
        self._tls = verify if isinstance(verify, ssl.SSLContext) else _tls(verify)
        self._targets: dict[str, Target] = {}
        self._idle: dict[Target, list[Connection]] = {}
        self._swept_at = time.monotonic()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The receiver's status code; raises :class:`PostFailed`, or ``UrlRefused`` when
        the host resolves inward (nothing is sent then)."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = Target.of(url)
        request = _request(target, body, headers)
        try:
            async with asyncio.timeout(self.timeout_s):
                connection = self._take(target)
                if connection is not None:
                    try:
                        return await self._exchange(target, connection, request)
                    except (ConnectionError, asyncio.IncompleteReadError):
                        pass  # closed by the receiver as we reused it: once more, on a new one
                connection = await self._open(target)
                return await self._exchange(target, connection, request)
        except UrlRefused:
            raise
        except TimeoutError:
            raise PostFailed(f"TimeoutError: no answer within {self.timeout_s:g} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise PostFailed(f"{type(e).__name__}: {e}") from None

    def _take(self, target: Target) -> Connection | None:
        now = time.monotonic()
        if now - self._swept_at > KEEPALIVE_S:
            self._sweep(now)
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    def _sweep(self, now: float) -> None:
        """Close idle connections past their time, for receivers no longer posted to too."""
        self._swept_at = now
        for target, idle in list(self._idle.items()):
            kept = [connection for connection in idle if connection.usable(now)]
            for connection in idle:
                if connection not in kept:
                    connection.close()
            if kept:
                self._idle[target] = kept
            else:
                del self._idle[target]

    async def _open(self, target: Target) -> Connection:
        addresses = await asyncio.to_thread(self._addresses, target.host, target.port)
        tls = self._tls if target.scheme == "https" else None
        failure: OSError = ConnectionError(f"{target.host} has no address")
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    str(address), target.port, ssl=tls,
                    server_hostname=target.host if tls else None,
                )  # fmt: skip
                return Connection(reader, writer)
            except OSError as error:
                failure = error  # the next address, as a resolver's caller would
        raise failure

    def _addresses(self, host: str, port: int) -> list[Address]:
        """``host``'s addresses, checked (raises ``UrlRefused``)."""
        if self.allow_private:
            return self.resolve(host, port)
        return checked_addresses(host, port, self.resolve)

    async def _exchange(self, target: Target, connection: Connection, request: bytes) -> int:
        """Send, read the reply; the connection goes back to the idle ones if it can."""
        try:
            connection.writer.write(request)
            status, keep = await _reply(connection.reader)
        except BaseException:
            connection.close()
            raise
        if keep:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(target, []).append(connection)
        else:
            connection.close()
        return status

    async def aclose(self) -> None:
        idle = [connection for kept in self._idle.values() for connection in kept]
        self._idle.clear()
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()


def _request(target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return b"".join(
        (target.head, lines.encode("ascii"), b"Content-Length: %d\r\n\r\n" % len(body), body)
    )


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """``(status, keep the connection)``, the reply's body read and dropped (unless large)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        status = int(rest[:3])
        if not 100 <= status < 200:
            break  # 1xx: an interim answer, the real one follows
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip().lower()
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "")
    if status in (204, 304):
        return status, keep
    if "chunked" in headers.get("transfer-encoding", ""):
        return status, keep and await _drain_chunks(reader)
    length = headers.get("content-length")
    if length is None:
        return status, False  # the body runs until the receiver closes: not worth waiting
    size = int(length)
    if size > MAX_DRAINED:
        return status, False
    await reader.readexactly(size)
    return status, keep


async def _drain_chunks(reader: asyncio.StreamReader) -> bool:
    """Read a chunked body to its end; False (close the connection) if it is too large."""
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return True
        total += size
        if total > MAX_DRAINED:
            return False
        await reader.readexactly(size + 2)


def _tls(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
