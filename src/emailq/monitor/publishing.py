"""Wiring a worker process to the monitor: its recorder and the task publishing it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from emailq.deployment import Deployment
from emailq.monitor.recorder import Recorder, publish_forever
from emailq.monitor.store import MonitorStore, open_store
from emailq.providers.base import Provider
from emailq.settings import Settings

log = logging.getLogger(__name__)


def worker_recorder(settings: Settings, *providers: Provider) -> Recorder | None:
    """The recorder of a worker sending through ``providers`` (the first names it), which
    report their send times to it; None when ``monitor.publish_s`` is 0: nothing recorded."""
    if settings.monitor.publish_s <= 0:
        return None
    recorder = Recorder("", providers[0].name if providers else "")
    for provider in providers:
        provider.observe_sends(recorder.record_send)
    return recorder


class Publishing:
    def __init__(self, task: asyncio.Task[None], store: MonitorStore) -> None:
        self.task = task
        self.store = store


def start_publishing(
    deployment: Deployment, recorder: Recorder | None, worker: str, stop: asyncio.Event
) -> Publishing | None:
    if recorder is None:
        return None
    recorder.worker = worker
    store = open_store(deployment.broker)
    interval = deployment.settings.monitor.publish_s
    task = asyncio.create_task(publish_forever(recorder, store.publish_sample, interval, stop))
    return Publishing(task, store)


async def stop_publishing(publishing: Publishing | None) -> None:
    """After the worker stopped: the last window goes out (the stop event is set)."""
    if publishing is None:
        return
    try:
        await asyncio.wait_for(publishing.task, 10.0)
    except Exception:
        log.warning("the last monitor samples were not published")
    with contextlib.suppress(Exception):
        publishing.store.close()
