"""The sender's HTTP/1.1 client: one POST per event over keep-alive connections, several
in flight to a receiver at once, each on its own connection.

Why not httpx here: profiled, httpx and httpcore were ~80 % of the sender's CPU per event
(its pool checks every connection's socket on every request), and a webhook process that
costs 2 ms of CPU per event competes with the mail workers for the same cores. What a
webhook needs is small: POST a body, read the status, drop the reply's body, reuse the
connection. The HTTP itself (framing, chunked bodies, 1xx, keep-alive or not) is h11's,
the protocol engine under httpcore; this module only keeps the connections. (The
registration probe, one GET, still uses httpx: webhooks/pinned.py.)

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

import h11

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
    path: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # Host, User-Agent, Content-Type

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        named = f"[{host}]" if ":" in host else host
        authority = named if port == (443 if https else 80) else f"{named}:{port}"
        headers = ((b"Host", authority.encode("ascii")), (b"User-Agent", USER_AGENT.encode()),
                   (b"Content-Type", b"application/json"))  # fmt: skip
        return cls(parts.scheme, host, port, path.encode("ascii"), headers)


@dataclass(slots=True)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
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
        try:
            async with asyncio.timeout(self.timeout_s):
                connection = self._take(target)
                if connection is not None:
                    try:
                        return await self._exchange(target, connection, body, headers)
                    except (ConnectionError, asyncio.IncompleteReadError):
                        pass  # closed by the receiver as we reused it: once more, on a new one
                connection = await self._open(target)
                return await self._exchange(target, connection, body, headers)
        except UrlRefused:
            raise
        except TimeoutError:
            raise PostFailed(f"TimeoutError: no answer within {self.timeout_s:g} s") from None
        except (OSError, asyncio.IncompleteReadError, h11.ProtocolError) as e:
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

    async def _exchange(
        self, target: Target, connection: Connection, body: bytes, headers: dict[str, str]
    ) -> int:
        """Send, read the reply; the connection goes back to the idle ones if it can."""
        try:
            connection.writer.write(_request(connection.http, target, body, headers))
            status, keep = await _reply(connection)
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


def _request(http: h11.Connection, target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    fields: list[tuple[bytes, bytes]] = [*target.headers]
    fields += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
    fields.append((b"Content-Length", b"%d" % len(body)))
    return b"".join((
        http.send(h11.Request(method=b"POST", target=target.path, headers=fields)) or b"",
        http.send(h11.Data(data=body)) or b"",
        http.send(h11.EndOfMessage()) or b"",
    ))  # fmt: skip


async def _reply(connection: Connection) -> tuple[int, bool]:
    """``(status, keep the connection)``, the reply's body read and dropped (unless large, or
    unframed: it would run until the receiver closes, not worth waiting for)."""
    status, drained = 0, 0
    while True:
        event = await _next_event(connection)
        if isinstance(event, h11.Response):
            status = event.status_code
            if not _framed(event):
                return status, False
        elif isinstance(event, h11.Data):
            drained += len(event.data)
            if drained > MAX_DRAINED:
                return status, False
        elif isinstance(event, h11.EndOfMessage):
            break
        # h11.InformationalResponse (1xx): an interim answer, the real one follows
    http = connection.http
    if http.our_state is h11.DONE and http.their_state is h11.DONE:
        http.start_next_cycle()
        return status, True
    return status, False  # Connection: close, or HTTP/1.0


async def _next_event(connection: Connection) -> h11.Event:
    """The reply's next piece, reading from the socket as h11 needs."""
    while (event := connection.http.next_event()) is h11.NEED_DATA:
        data = await connection.reader.read(65536)
        if not data:
            raise ConnectionError("the receiver closed the connection before its answer ended")
        connection.http.receive_data(data)
    assert event is not h11.PAUSED  # one request per cycle: h11 pauses only after a reply
    return event  # type: ignore[return-value]


def _framed(response: h11.Response) -> bool:
    """Whether the reply says where its body ends (a length, chunks, or no body at all)."""
    if response.status_code in (204, 304):
        return True
    names = {name for name, _ in response.headers}
    return b"content-length" in names or b"transfer-encoding" in names


def _tls(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
