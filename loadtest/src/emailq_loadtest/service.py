"""The service under test when the run starts its own: sink processes and worker processes.

Each sink is emailq's built-in SMTP sink (aiosmtpd) in a process of its own; it sends the
(id, receipt time) of what it accepted to the load test over a pipe every 100 ms. Workers
are ``emailq worker`` processes, each delivering over SMTP to one of the sinks (worker i
to sink i mod n), so several sinks share the receiving load when one would not keep up.
A ``delay`` makes a sink deliberately slow (it blocks its event loop that long per
message): the test of the verdict machinery needs a service that cannot keep up.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from emailq.sink import SinkHandler, SmtpSink, free_port
from emailq_loadtest import leansink

Receipts = list[tuple[str, float]]
FLUSH_S = 0.1
STOPPED = "stopped"


class RecordingHandler(SinkHandler):
    """The built-in sink's handler, optionally slow, whose records can be taken in batches."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            time.sleep(self.delay)  # blocks the whole sink, as an overloaded server would
        return await super().handle_DATA(server, session, envelope)

    def take(self) -> Receipts:
        with self.arrived:
            taken, self.deliveries = self.deliveries, []
        return [(d.message_id, d.received_at) for d in taken]


SINK_KINDS = ("aiosmtpd", "lean")


def sink_main(kind: str, port: int, delay: float, conn: Connection) -> None:
    """A sink process: serve until told to stop, sending receipts every ``FLUSH_S``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if kind == "lean":
        lean_sink(port, delay, conn)
        return
    handler = RecordingHandler(delay)
    sink = SmtpSink(port=port, handler=handler).start()
    conn.send(("ready", os.getpid()))
    try:
        while not conn.poll(FLUSH_S):
            if batch := handler.take():
                conn.send(batch)
    finally:
        sink.stop()
        conn.send(handler.take())
        conn.send(STOPPED)
        conn.close()


def lean_sink(port: int, delay: float, conn: Connection) -> None:
    receipts: Receipts = []

    def tick() -> bool:
        if receipts:
            conn.send(receipts[:])
            receipts.clear()
        return not conn.poll()

    try:
        leansink.run(port, delay, lambda *receipt: receipts.append(receipt),
                     lambda: conn.send(("ready", os.getpid())), tick, FLUSH_S)  # fmt: skip
    finally:
        conn.send(receipts)
        conn.send(STOPPED)
        conn.close()


@dataclass
class Sink:
    port: int
    process: BaseProcess
    conn: Connection
    pid: int = 0


class SinkPool:
    """Sink processes and a thread that hands their receipts to ``deliver``."""

    def __init__(
        self,
        ports: Sequence[int],
        deliver: Callable[[Receipts], None],
        delay: float = 0.0,
        kind: str = "aiosmtpd",
    ) -> None:
        self.deliver = deliver
        self.delay, self.kind = delay, kind
        context = multiprocessing.get_context("spawn")
        self.sinks: list[Sink] = []
        for port in ports:
            parent, child = context.Pipe()
            process = context.Process(
                target=sink_main, args=(kind, port, delay, child), daemon=True
            )
            process.start()
            child.close()
            self.sinks.append(Sink(port, process, parent))
        for sink in self.sinks:
            if not sink.conn.poll(30):
                raise RuntimeError(f"the SMTP sink on port {sink.port} did not start")
            _, sink.pid = sink.conn.recv()
        self._open = [sink.conn for sink in self.sinks]
        self._thread = threading.Thread(target=self._collect, name="sink-collector", daemon=True)
        self._thread.start()

    @property
    def ports(self) -> list[int]:
        return [sink.port for sink in self.sinks]

    def _collect(self) -> None:
        while self._open:
            for conn in wait(self._open, timeout=0.5):
                assert isinstance(conn, Connection)
                try:
                    message = conn.recv()
                except EOFError:
                    message = STOPPED
                if message == STOPPED:
                    self._open.remove(conn)
                elif message:
                    self.deliver(message)

    def stop(self) -> None:
        """Stop the sinks after handing over everything they received."""
        for sink in self.sinks:
            with contextlib.suppress(OSError):
                sink.conn.send("stop")
        self._thread.join(15)
        for sink in self.sinks:
            sink.process.join(5)
            if sink.process.is_alive():
                sink.process.kill()
                sink.process.join()
            sink.conn.close()


@dataclass(frozen=True, slots=True)
class WorkerFlags:
    batch: int = 100
    concurrency: int = 2
    smtp_pool: int = 8
    provider_rate: float | None = None  # a provider rate limit, messages/s (throttling)
    shutdown_timeout: float = 2.0  # a healthy run has nothing in flight by then


def worker_command(
    broker_url: str, sink_port: int, flags: WorkerFlags, backup_port: int | None = None
) -> list[str]:
    """``backup_port``: a second sink, the next in a failover chain."""
    ports = [sink_port] if backup_port is None else [sink_port, backup_port]
    providers = [f"--provider-url=smtp://127.0.0.1:{port}?pool={flags.smtp_pool}"
                 for port in ports]  # fmt: skip
    command = [
        sys.executable, "-m", "emailq", "worker", "--broker-url", broker_url, *providers,
        "--batch", str(flags.batch), "--concurrency", str(flags.concurrency),
        "--shutdown-timeout", str(flags.shutdown_timeout),
    ]  # fmt: skip
    if flags.provider_rate:
        command += ["--provider-rate", str(flags.provider_rate)]
    return command


class WorkerPool:
    """``emailq worker`` processes, each in its own session so none is left behind. The pool
    may grow and shrink while it runs (``resize``: the autoscaled pool); a worker it shrinks
    by gets SIGTERM and counts as running until it has exited."""

    def __init__(
        self,
        broker_url: str,
        ports: Sequence[int],
        count: int,
        flags: WorkerFlags,
        logs: Path,
        backup_ports: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """``backup_ports``: each worker's chain goes on to one of these (a fault's)."""
        self.broker_url, self.ports, self.flags, self.log_dir = broker_url, ports, flags, logs
        self.backup_ports, self.env = backup_ports, env or {}
        self.logs: list[IO[Any]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.retiring: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.resize(count)

    def _start(self) -> None:
        index, self.started = self.started, self.started + 1
        log = (self.log_dir / f"worker-{index}.log").open("wb")
        self.logs.append(log)
        backup = self.backup_ports[index % len(self.backup_ports)] if self.backup_ports else None
        port = self.ports[index % len(self.ports)]
        command = worker_command(self.broker_url, port, self.flags, backup)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        )

    def resize(self, count: int) -> None:
        """Start workers up to ``count``, or SIGTERM the newest down to it (each finishes or
        releases what it holds, as in ``emailq run``)."""
        while len(self.processes) < count:
            self._start()
        while len(self.processes) > count:
            process = self.processes.pop()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            self.retiring.append(process)

    @property
    def running(self) -> int:
        """Processes that cost CPU and memory now: the pool, and those still stopping."""
        self.retiring = [p for p in self.retiring if p.poll() is None]
        return len(self.processes) + len(self.retiring)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def check(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"worker {process.pid} exited with {process.returncode}: see its log"
                )

    def stop(self) -> None:
        """SIGTERM: each worker finishes (or releases) its batches in hand, then exits."""
        everyone = self.processes + self.retiring
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.flags.shutdown_timeout + 10
        for process in everyone:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.logs:
            log.close()


def sink_ports(count: int, first: int | None = None) -> list[int]:
    ports = [first] if first else []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
