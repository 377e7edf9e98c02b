"""Event lag under load: a local webhook receiver subscribed to every event, and the time
from each outcome (the event's ``timestamp``: when the worker settled the mail as sent,
dead…) to the moment its webhook arrived.

The receiver is a process of its own (an asyncio HTTP/1.1 server with keep-alive, so it
is not what limits the rate) that verifies each signature and sends what it received to
the load test over a pipe every 100 ms, as the sink processes do. ``WebhookLoad`` is what
a run adds: the endpoint registered in the queue's webhook store, the receiver, and an
``emailq webhooks`` process beside the workers (allowed to call a loopback receiver).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any

from standardwebhooks import Webhook, WebhookVerificationError

from emailq.deployment import Deployment
from emailq.ids import new_id
from emailq.percentiles import percentile
from emailq.sink import free_port
from emailq.webhooks.signing import new_secret
from emailq.webhooks.store import EVENT_TYPES, Endpoint

FLUSH_S = 0.1
STOPPED = "stopped"
Receipt = tuple[str, str, float, bool]  # event id, type, lag (s), signature valid


# -- the receiver process ----------------------------------------------------------------------


def receiver_main(port: int, secret: str, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(OSError):  # a session, so a scheduling group (Linux autogroup)
        os.setsid()  # of its own: a benchmark can renice it apart from the load test
    asyncio.run(_serve(port, Webhook(secret), conn))


async def _serve(port: int, verifier: Webhook, conn: Connection) -> None:
    receipts: list[Receipt] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                method, headers = _head(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "POST":
                    receipts.append(_receipt(verifier, headers, body))
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:  # registration's probe, or anyone else: not a redirect
                    writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    conn.send(("ready", os.getpid()))
    loop = asyncio.get_running_loop()
    try:
        while not await loop.run_in_executor(None, conn.poll, FLUSH_S):
            if receipts:
                conn.send(receipts[:])
                receipts.clear()
    finally:
        server.close()
        conn.send(receipts)
        conn.send(STOPPED)
        conn.close()


def _head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ", 1)[0], headers


def _receipt(verifier: Webhook, headers: dict[str, str], body: bytes) -> Receipt:
    arrived = time.time()
    try:
        verifier.verify(body, headers)
        valid = True
    except WebhookVerificationError:
        valid = False
    event = json.loads(body)
    lag = arrived - datetime.fromisoformat(event["timestamp"]).timestamp()
    return headers.get("webhook-id", ""), str(event["type"]), lag, valid


# -- the load test's side ----------------------------------------------------------------------


@dataclass
class Received:
    """What the receiver was sent: each event once (the first arrival), and the rest."""

    lags: dict[str, tuple[str, float]] = field(default_factory=dict)  # id → (type, lag s)
    duplicates: int = 0
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, receipts: list[Receipt]) -> None:
        with self.lock:
            for event_id, kind, lag, valid in receipts:
                if not valid:
                    self.bad_signatures += 1
                elif event_id in self.lags:
                    self.duplicates += 1
                else:
                    self.lags[event_id] = (kind, lag)

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for k, _ in self.lags.values() if k == kind)

    def figures(self) -> dict[str, Any]:
        with self.lock:
            sent = sorted(lag for kind, lag in self.lags.values() if kind == "email.sent")
            kinds = Counter(kind for kind, _ in self.lags.values())
            duplicates, bad = self.duplicates, self.bad_signatures
        ms = {"p50": percentile(sent, 50), "p99": percentile(sent, 99),
              "max": sent[-1] if sent else 0.0}  # fmt: skip
        return {
            "events": sum(kinds.values()), "by_type": dict(kinds),
            "duplicates": duplicates, "bad_signatures": bad,
            "sent_lag_ms": {k: round(v * 1000, 1) for k, v in ms.items()},
        }  # fmt: skip


class EventReceiver:
    """The receiver process, and a thread that hands its receipts to ``received``."""

    def __init__(self, secret: str) -> None:
        self.port = free_port()
        self.received = Received()
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=receiver_main, args=(self.port, secret, child), daemon=True
        )
        self.process.start()
        child.close()
        if not self.conn.poll(30):
            raise RuntimeError(f"the webhook receiver on port {self.port} did not start")
        _, self.pid = self.conn.recv()
        self._thread = threading.Thread(target=self._collect, name="webhook-receipts", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def _collect(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except EOFError:
                return
            if message == STOPPED:
                return
            self.received.add(message)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self._thread.join(10)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def register(deployment: Deployment, tenant: str, url: str, secret: str) -> Endpoint:
    """One endpoint for every event type, stored as ``POST /v1/webhooks`` stores it."""
    endpoint = Endpoint(id=f"wh_{new_id()}", tenant=tenant, url=url, events=EVENT_TYPES,
                        secret=secret, created_at=time.time())  # fmt: skip
    deployment.webhooks.add_endpoint(endpoint)
    return endpoint


def webhooks_command(broker_url: str) -> list[str]:
    return [sys.executable, "-m", "emailq", "webhooks", "--broker-url", broker_url]


def webhooks_env() -> dict[str, str]:
    """The receiver is on loopback: the allow flag, for this process only."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "EMAILQ_WEBHOOKS_ALLOW_PRIVATE_URLS": "true"}


class WebhookLoad:
    """A run's webhook side: endpoint, receiver and ``emailq webhooks``, until ``stop``."""

    def __init__(
        self, deployment: Deployment, broker_url: str, tenant: str, log: Path, nice: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """``nice``: run ``emailq webhooks`` at that CPU niceness (mail workers first);
        ``env``: more of its environment (a benchmark's ``PYTHONPATH`` to another tree)."""
        secret = new_secret()
        self.receiver = EventReceiver(secret)
        register(deployment, tenant, self.receiver.url, secret)
        self.log: IO[bytes] = log.open("wb")
        command = webhooks_command(broker_url)
        if nice:
            command = ["nice", "-n", str(nice), *command]  # nice execs it: the same pid
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT,
            env={**webhooks_env(), **(env or {})}, start_new_session=True,
        )  # fmt: skip

    @property
    def pids(self) -> dict[str, int]:
        return {"webhooks": self.process.pid, "receiver": self.receiver.pid}

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"emailq webhooks {self.process.pid} exited with {self.process.returncode}"
            )

    def wait_for_sent(self, count: int, timeout: float) -> bool:
        """Until ``count`` email.sent events have arrived, or ``timeout`` s have passed."""
        deadline = time.monotonic() + timeout
        while self.receiver.received.count("email.sent") < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()
        self.receiver.stop()

    def figures(self, expected_sent: int) -> dict[str, Any]:
        figures = self.receiver.received.figures()
        figures["expected_sent"] = expected_sent
        return figures
