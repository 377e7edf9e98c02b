"""A real HTTP receiver for webhook tests. It verifies every signature with the Standard
Webhooks algorithm written out here (HMAC-SHA256 over "id.timestamp.body", keyed by the
base64 after "whsec_"), independently of the package emailq signs with."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emailq.sink import free_port


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    event_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    signed = f"{event_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [
        s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    return any(hmac.compare_digest(expected, s) for s in offered)


@dataclass
class Receiver:
    port: int
    host: str = "127.0.0.1"  # the name in its URL (tests resolve it to 127.0.0.1 themselves)
    scheme: str = "http"
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, per handshake
    secret: str = ""
    status: int = 200  # what it answers; 503: "down"
    redirect_to: str | None = None
    requests: int = 0  # POSTs
    probes: int = 0  # GETs (registration's redirect check)
    hosts: set[str] = field(default_factory=set)  # the Host headers posted to it
    bad_signatures: int = 0
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # deduplicated by id
    received_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/hooks"

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events.values() if e["type"] == kind]

    def wait_for(self, count: int, timeout: float = 30.0, kind: str | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                seen = [e for e in self.events.values() if kind is None or e["type"] == kind]
            if len(seen) >= count:
                return True
            time.sleep(0.02)
        return False


@contextmanager
def running_receiver(
    host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    """``tls``: a server context (its certificate names ``host``); the receiver records
    the server name each client asks for."""
    receiver = Receiver(free_port(), host, "https" if tls else "http")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with receiver.lock:
                receiver.probes += 1
                self.send_response(307 if receiver.redirect_to else 405)
                if receiver.redirect_to:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                receiver.requests += 1
                receiver.hosts.add(headers.get("host", ""))
                if receiver.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to)
                    self.end_headers()
                    return
                if receiver.status >= 300:
                    self.send_response(receiver.status)
                    self.end_headers()
                    return
                if not verify(receiver.secret, headers, body):
                    receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.events.setdefault(headers["webhook-id"], json.loads(body))
                receiver.received_at.setdefault(headers["webhook-id"], time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops concurrent connects for a 1 s SYN retry

    server = Server(("127.0.0.1", receiver.port), Handler)
    if tls is not None:
        tls.sni_callback = lambda _socket, name, _context: receiver.server_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
