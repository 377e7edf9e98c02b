"""Helpers for the monitor's tests: deployments with short intervals, worker windows."""

from __future__ import annotations

from typing import Any

from emailq.broker import Action, Job, Outcome
from emailq.clock import Clock, now
from emailq.deployment import Deployment
from emailq.lanes import Lane
from emailq.settings import Settings


def monitored(url: str, clock: Clock = now, **monitor: Any) -> Deployment:
    """A deployment whose monitor has the given settings (nothing read from the env)."""
    settings = Settings(broker={"url": url}, provider={"url": "file:///nonexistent"},
                        monitor=monitor)  # fmt: skip
    return Deployment(settings, clock=clock)


def outcome(lane: Lane, enqueued_at: float, action: Action = Action.COMPLETE,
            tenant: str = "default", payload: bytes = b"{}") -> Outcome:  # fmt: skip
    job = Job(id="m", token=1, lane=lane, payload=payload, attempts=1, max_attempts=None,
              enqueued_at=enqueued_at, tenant=tenant)  # fmt: skip
    return Outcome(job, action)


# -- local HTTP receivers for alert notices ------------------------------------------------
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from emailq.monitor.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER  # noqa: E402


class Receiver:
    """An HTTP server on a free port that keeps every JSON body POSTed to it. With a
    ``secret`` it checks the signature and the timestamp (a replay guard), as a real
    receiver should, and answers 401 to a bad one."""

    def __init__(self, secret: bytes | None = None, max_skew_s: float = 300) -> None:
        self.secret = secret
        self.max_skew_s = max_skew_s
        self.bodies: list[dict[str, Any]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 200 if receiver.accepts(raw, self.headers) else 401
                if status == 200:
                    receiver.bodies.append(json.loads(raw))
                else:
                    receiver.refused += 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepts(self, raw: bytes, headers: Any) -> bool:
        if self.secret is None:
            return True
        stamp = headers.get(TIMESTAMP_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        expected = "sha256=" + hmac.new(self.secret, stamp.encode() + b"." + raw,
                                        hashlib.sha256).hexdigest()  # fmt: skip
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= self.max_skew_s
        return fresh and hmac.compare_digest(expected, signature)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the API in process, from synchronous tests -----------------------------------------
import asyncio  # noqa: E402

import httpx  # noqa: E402


class AppClient:
    """``get``/``post``/``delete`` on an ASGI app through httpx's ASGI transport."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)
