"""Real faults for the delivery tests: SMTP servers that stall, refuse or answer 451, and
helpers to fill a queue and count what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from emailq.broker import Broker, NewMessage
from emailq.message import parse_email
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.sink import SinkHandler, SmtpSink
from emailq.worker import Worker, WorkerSettings


def invitations(n: int, *, max_attempts: int | None = None) -> list[NewMessage]:
    payloads = [
        parse_email({
            "from": "planner@weddings.example", "to": f"guest{i}@d{i % 7}.example",
            "subject": f"Invitation {i}", "text": "You are invited.\n" * 20,
        }).to_payload()
        for i in range(n)
    ]  # fmt: skip
    if max_attempts is None:
        return [NewMessage(p, validated=True) for p in payloads]
    return [NewMessage(p, max_attempts=max_attempts, validated=True) for p in payloads]


def fill(broker: Broker, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 1000):
        ids += broker.enqueue_many(invitations(min(1000, n - start)))
    return ids


def deliver(broker: Broker, port: int) -> None:
    """Lease and send until nothing is ready, in batches of 10, through a worker in process."""

    async def run() -> None:
        provider = SmtpProvider(SmtpSettings(port=port, pool_size=2))
        worker = Worker(broker, provider, WorkerSettings(batch_size=10))
        while jobs := await asyncio.to_thread(broker.lease, worker.name, 10, 30):
            await worker.process(jobs)
        await provider.close()

    asyncio.run(run())


def copies(sink: SmtpSink) -> Counter[str]:
    """How many times each message id arrived."""
    return Counter(d.message_id for d in list(sink.deliveries))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pause_between_writes(pid: int, broker_url: str) -> None:
    """SIGSTOP ``pid``. On SQLite, at a moment it holds no write transaction: a process
    stopped inside one stalls every process of the file until it resumes (SQLite has one
    writer at a time; see the README), which would hide what a test means to show."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if not broker_url.startswith("sqlite:"):
            return
        probe = sqlite3.connect(broker_url.removeprefix("sqlite:///"), timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # locked: let it finish and try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("the process held the SQLite write lock at every try")


class Greylisting(SinkHandler):
    """Answers ``451`` to the DATA of a random share of messages, as a busy or greylisting
    server does; the rest are accepted."""

    def __init__(self, share: float, seed: int = 7) -> None:
        super().__init__()
        self.share = share
        self.random = random.Random(seed)
        self.refused = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.random.random() < self.share:
            self.refused += 1
            return "451 4.7.1 Greylisted, try again later"
        return await super().handle_DATA(server, session, envelope)


class SlowSink(SinkHandler):
    """Takes ``delay`` seconds per message, holding up the whole server as an overloaded
    one would."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            time.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


class LaggingRelay(SinkHandler):
    """Answers each message after ``delay`` seconds without holding up the others, as a
    relay a few milliseconds away does: a run then lasts as long as the round trips make
    it, not as long as this machine's speed does."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


class StallingRelay:
    """A TCP relay in front of a real SMTP server that accepts connections but passes no
    byte either way until :meth:`release` (a server that hangs before its greeting)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.released = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self.released.wait()
        if self._closing:
            return  # close() closes the client socket
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            return
        self._sockets.append(upstream)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self._closing = True
        self.released.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
