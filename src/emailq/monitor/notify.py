"""Alert notices out: a Slack incoming webhook (Block Kit), a JSON webhook signed with
HMAC-SHA256, and email over direct SMTP to an operator (never through the queue being
watched: it may be the thing that is down).

:class:`Dispatcher` gives each channel a thread and a queue of its own: the monitor only
hands notices over, so a slow or dead receiver never slows the evaluation or the mail, nor
the other channels. A notice that fails is retried with backoff, each failure logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import smtplib
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported by the HTTP channels: the monitor runs in a worker process
    import httpx

from emailq.monitor.alerts import Notice

log = logging.getLogger(__name__)
# httpx logs every request at INFO with its URL; a Slack webhook URL is a secret, and one
# line per notice says nothing our own log lines do not.
logging.getLogger("httpx").setLevel(logging.WARNING)

SIGNATURE_HEADER = "X-Emailq-Signature"
TIMESTAMP_HEADER = "X-Emailq-Timestamp"
HTTP_TIMEOUT_S = 5.0
_STOP = object()


class Channel(Protocol):
    name: str

    def send(self, notice: Notice) -> None:
        """Deliver one notice or raise."""


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def headline(notice: Notice) -> str:
    mark = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[notice.status]
    value = "no data" if notice.value is None else f"{notice.value:.4g}"
    return f"[{mark}] {notice.severity}: {notice.rule} — {notice.summary} (now {value})"


def slack_body(notice: Notice) -> dict[str, Any]:
    """A Block Kit message, with ``text`` as the fallback for notifications."""
    fields = [
        f"*Rule*\n{notice.rule}", f"*Severity*\n{notice.severity}",
        f"*Value*\n{'no data' if notice.value is None else f'{notice.value:.4g}'}",
        f"*Threshold*\n{notice.metric} {notice.op} {notice.threshold:g}",
        f"*Lanes*\n{', '.join(notice.lanes) or 'all'}", f"*Since*\n{_when(notice.since)}",
    ]  # fmt: skip
    return {
        "text": headline(notice),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": headline(notice)[:150]}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"emailq monitor · {_when(notice.at)}"}]},
        ],
    }  # fmt: skip


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``<timestamp>.<body>``: a receiver checks both, and refuses
    timestamps too old (a replay)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SlackChannel:
    name = "slack"

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = _http_client()

    def send(self, notice: Notice) -> None:
        self.client.post(self.url, json=slack_body(notice)).raise_for_status()


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url
        self.secret = secret.encode() if secret else None
        self.client = _http_client()

    def send(self, notice: Notice) -> None:
        body = json.dumps(notice.to_json(), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))  # the receiver's replay check is wall-clock too
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        self.client.post(self.url, content=body, headers=headers).raise_for_status()


class EmailChannel:
    name = "email"

    def __init__(self, smtp_url: str, sender: str, recipient: str) -> None:
        parts = urlsplit(smtp_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.tls = parts.scheme == "smtps"
        self.login = (parts.username, parts.password) if parts.username else None
        self.sender = sender
        self.recipient = recipient

    def send(self, notice: Notice) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = self.recipient
        message["Subject"] = headline(notice)
        message.set_content(json.dumps(notice.to_json(), indent=2))
        connect = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
        with connect(self.host, self.port, timeout=HTTP_TIMEOUT_S) as smtp:
            if self.login and self.login[1] is not None:
                smtp.login(self.login[0] or "", self.login[1])
            smtp.send_message(message)


class _Courier(threading.Thread):
    """One channel's thread: its notices in order, each retried with backoff."""

    def __init__(self, channel: Channel, attempts: int, backoff_s: float) -> None:
        super().__init__(name=f"emailq-notify-{channel.name}", daemon=True)
        self.channel = channel
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=1000)
        self.sent = 0
        self.failed = 0

    def run(self) -> None:
        while (notice := self.inbox.get()) is not _STOP:
            self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                self.channel.send(notice)
                self.sent += 1
                return
            except Exception as error:
                last = attempt == self.attempts
                log.warning("alert notice %s/%s to %s failed (attempt %d of %d: %s)%s",
                            notice.rule, notice.status, self.channel.name, attempt,
                            self.attempts, describe(error),
                            "; giving up" if last else f"; retrying in {delay:.1f} s")  # fmt: skip
                if last:
                    self.failed += 1
                    return
                time.sleep(delay)
                delay = min(delay * 2, 300.0)


def _http_client() -> httpx.Client:
    import httpx

    return httpx.Client(timeout=HTTP_TIMEOUT_S)


def describe(error: Exception) -> str:
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return type(error).__name__


class Dispatcher:
    def __init__(self, channels: Sequence[Channel], attempts: int = 6, backoff_s: float = 2.0):
        self.couriers = [_Courier(channel, attempts, backoff_s) for channel in channels]
        for courier in self.couriers:
            courier.start()

    def send(self, notice: Notice) -> None:
        for courier in self.couriers:
            try:
                courier.inbox.put_nowait(notice)
            except queue.Full:
                log.error("alert notices to %s are backed up; dropping %s/%s",
                          courier.channel.name, notice.rule, notice.status)  # fmt: skip

    def close(self, timeout: float = 5.0) -> None:
        for courier in self.couriers:
            with contextlib.suppress(queue.Full):  # a backed-up courier is a daemon thread
                courier.inbox.put_nowait(_STOP)
        deadline = time.monotonic() + timeout
        for courier in self.couriers:
            courier.join(max(0.0, deadline - time.monotonic()))
