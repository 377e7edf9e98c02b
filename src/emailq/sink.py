"""The built-in SMTP sink: accepts every message and remembers when each one arrived.

For demos, tests and load tests (aiosmtpd tops out near 40,000 messages/min on this kind
of machine; throughput benchmarks send to Postfix's ``smtp-sink`` instead). Messages are
matched to the queue by their ``X-Emailq-Id`` header. ``max_connections`` makes it a relay
with a per-client connection limit (Postfix's ``smtpd_client_connection_count_limit``): a
connection beyond it is greeted with 421 and closed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

_ID_HEADER = b"\r\nx-emailq-id:"


@dataclass
class Delivery:
    message_id: str
    received_at: float
    mail_from: str
    recipients: tuple[str, ...]
    size: int


def message_id_of(data: bytes) -> str:
    """The X-Emailq-Id header's value, read from the header block only ("" if absent)."""
    end = data.find(b"\r\n\r\n")
    head = b"\r\n" + (data if end < 0 else data[:end]).lower()
    start = head.find(_ID_HEADER)
    if start < 0:
        return ""
    start += len(_ID_HEADER)
    stop = head.find(b"\r\n", start)
    return head[start : stop if stop >= 0 else None].strip().decode("ascii", "replace")


@dataclass
class SinkHandler:
    """aiosmtpd handler: records deliveries; ``keep_data`` also keeps every message's bytes."""

    keep_data: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    data: dict[str, bytes] = field(default_factory=dict)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        delivery = Delivery(
            message_id=message_id_of(raw),
            received_at=time.time(),
            mail_from=str(envelope.mail_from),
            recipients=tuple(envelope.rcpt_tos),
            size=len(raw),
        )
        with self.arrived:
            self.deliveries.append(delivery)
            if self.keep_data:
                self.data[delivery.message_id] = raw
            self.arrived.notify_all()
        return "250 OK"


class ConnectionLimit:
    """Connections open at once, at most ``limit`` (None: no limit); what was turned away."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0
        self.most_open = 0  # the most connections open at once
        self.turned_away = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.limit is not None and self.open >= self.limit:
                self.turned_away += 1
                return False
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            return True

    def leave(self) -> None:
        with self._lock:
            self.open -= 1


class _LimitedSMTP(SMTP):
    """aiosmtpd's server, greeting a connection beyond the limit with 421 (and closing it)."""

    def __init__(self, handler: SinkHandler, limit: ConnectionLimit, **kwargs: object) -> None:
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]
        self._limit = limit
        self._admitted: bool | None = None  # decided at the first connection_made (not STARTTLS's)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted is None:
            self._admitted = self._limit.enter()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._limit.leave()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._admitted is False:
            await self.push("421 4.7.0 Error: too many connections from this client")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, handler: SinkHandler, limit: ConnectionLimit, **kwargs: object) -> None:
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]
        self.connection_limit = limit

    def factory(self) -> SMTP:
        return _LimitedSMTP(self.handler, self.connection_limit, **self.SMTP_kwargs)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class SmtpSink:
    """An SMTP server on its own thread. ``with SmtpSink() as sink: ... sink.port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_data: bool = False,
        handler: SinkHandler | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None,
    ) -> None:
        """``ssl_context``: speak TLS from the first byte (smtps://, port 465 style);
        ``max_connections``: greet any connection beyond that many open with 421."""
        self.host = host
        self.port = port or free_port(host)
        self.handler = handler or SinkHandler(keep_data=keep_data)
        self.connections = ConnectionLimit(max_connections)
        self._controller = _Controller(
            self.handler, self.connections, hostname=host, port=self.port, decode_data=False,
            data_size_limit=None, ssl_context=ssl_context,
        )  # fmt: skip

    @property
    def deliveries(self) -> list[Delivery]:
        return self.handler.deliveries

    @property
    def count(self) -> int:
        return len(self.handler.deliveries)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` messages have arrived; False if the timeout came first."""
        with self.handler.arrived:
            return self.handler.arrived.wait_for(lambda: self.count >= count, timeout)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
