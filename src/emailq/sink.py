"""The built-in SMTP sink: accepts every message and remembers when each one arrived.

For demos, tests and load tests (aiosmtpd tops out near 40,000 messages/min on this kind
of machine; throughput benchmarks send to Postfix's ``smtp-sink`` instead). Messages are
matched to the queue by their ``X-Emailq-Id`` header.
"""

from __future__ import annotations

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
    ) -> None:
        """``ssl_context``: speak TLS from the first byte (smtps://, port 465 style)."""
        self.host = host
        self.port = port or free_port(host)
        self.handler = handler or SinkHandler(keep_data=keep_data)
        self._controller = Controller(
            self.handler, hostname=host, port=self.port, decode_data=False, data_size_limit=None,
            ssl_context=ssl_context,
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
