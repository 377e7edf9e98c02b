"""``emailq serve``: the API under uvicorn, in one process or several sharing one socket.

Each server process is handed the settings object itself (pickled to the spawned child)
and builds its own app from it: nothing travels through environment variables.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess

import uvicorn

from emailq.api.app import create_app
from emailq.logs import configure_logging
from emailq.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0


def _config(settings: Settings) -> uvicorn.Config:
    app = create_app(settings)
    # Why: everything so far (modules, the app) lives as long as the process. Out of the
    # collector's generations, it is no longer rescanned on every full collection, which
    # cost about 9% of a 500-guest list's intake time (benchmarks/api.py).
    gc.freeze()
    return uvicorn.Config(
        app, host=settings.api.host, port=settings.api.port, log_level="warning",
        loop="uvloop", http="httptools", access_log=False, log_config=None,
    )  # fmt: skip


def serve_process(settings: Settings, sock: socket.socket | None = None) -> None:
    """One server process: the app on ``sock`` (shared with its siblings) or its own port."""
    configure_logging(settings)
    server = uvicorn.Server(_config(settings))
    server.run(sockets=[sock] if sock is not None else None)


def serve(settings: Settings) -> None:
    if settings.api.workers == 1:
        serve_process(settings)
        return
    config = uvicorn.Config(None, host=settings.api.host, port=settings.api.port)  # type: ignore[arg-type]
    sock = config.bind_socket()
    _Pool(settings, sock).run()


class _Pool:
    """Keeps ``api.workers`` server processes on one socket; SIGTERM stops them all."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self.stopping = False

    def _start(self) -> BaseProcess:
        process = self.context.Process(target=serve_process, args=(self.settings, self.sock))
        process.start()
        return process

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.processes = [self._start() for _ in range(self.settings.api.workers)]
        while not self.stopping:
            for index, process in enumerate(self.processes):
                if not process.is_alive() and not self.stopping:
                    log.warning("API process %s exited with %s; restarting", process.pid,
                                process.exitcode)  # fmt: skip
                    self.processes[index] = self._start()
            time.sleep(0.5)
        for process in self.processes:
            if process.pid and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()  # SIGTERM: uvicorn finishes its requests
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()

    def _stop(self, *_: object) -> None:
        self.stopping = True
