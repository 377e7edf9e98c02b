"""A worker's side of the monitor: what it settled, counted per lane and tenant, with a
latency sketch each, published to the broker every few seconds.

:meth:`Recorder.record` is the worker's ``on_settled`` hook: it runs on the worker's event
loop for every settled group, so it only counts and adds to sketches (no I/O). Latency is
from acceptance (or from ``send_at`` for scheduled mail) to the provider's acceptance.
:func:`publish_forever` sends the window to the broker off the hot path, on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from emailq.broker import Action, Outcome
from emailq.clock import Clock, now
from emailq.monitor import facts
from emailq.monitor.sketch import LatencySketch
from emailq.providers.base import Accepted, Permanent, SendResult, Transient

log = logging.getLogger(__name__)

# Deferrals a rate limit asked for are the queue pacing itself, not a failure.
PACING_ERRORS = frozenset({"rate limited", "limits down"})


@dataclass
class Tally:
    """One cell's counts in a window, and its delivery latencies."""

    sent: int = 0
    failed: int = 0  # buried: dead
    retried: int = 0
    deferred: int = 0  # put back untried because the provider is down or paused
    latency: LatencySketch = field(default_factory=LatencySketch)

    def merge(self, other: Tally) -> Tally:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.deferred += other.deferred
        self.latency.merge(other.latency)
        return self

    @property
    def attempts(self) -> int:
        return self.sent + self.failed + self.retried + self.deferred

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "retried": self.retried,
                "deferred": self.deferred, "latency": self.latency.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            int(data.get("sent", 0)), int(data.get("failed", 0)), int(data.get("retried", 0)),
            int(data.get("deferred", 0)), LatencySketch.from_json(data.get("latency", {})),
        )  # fmt: skip


@dataclass
class Window:
    """What one worker settled between ``since`` and the moment it was taken."""

    since: float
    cells: dict[tuple[str, str], Tally] = field(default_factory=dict)  # (lane, tenant)
    weddings: dict[str, Tally] = field(default_factory=dict)
    # provider → its tries: latency from the message going out to the provider's answer
    sends: dict[str, Tally] = field(default_factory=dict)

    def merge(self, other: Window) -> None:
        self.since = min(self.since, other.since)
        for cell, tally in other.cells.items():
            self.cells.setdefault(cell, Tally()).merge(tally)
        for wedding, tally in other.weddings.items():
            self.weddings.setdefault(wedding, Tally()).merge(tally)
        for provider, tally in other.sends.items():
            self.sends.setdefault(provider, Tally()).merge(tally)


def sample_body(window: Window, worker: str, provider: str, at: float) -> bytes:
    cells: dict[str, dict[str, Any]] = {}
    for (lane_name, tenant), tally in window.cells.items():
        cells.setdefault(lane_name, {})[tenant] = tally.to_json()
    body = {
        "worker": worker, "provider": provider, "since": window.since, "at": at,
        "cells": cells, "weddings": {k: t.to_json() for k, t in window.weddings.items()},
        "sends": {k: t.to_json() for k, t in window.sends.items()},
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


class Recorder:
    def __init__(self, worker: str, provider: str, clock: Clock = now) -> None:
        self.worker = worker
        self.provider = provider
        self.clock = clock
        self.window = Window(clock())

    def record(self, outcomes: Sequence[Outcome]) -> None:
        at = self.clock()
        cells = self.window.cells
        for outcome in outcomes:
            job = outcome.job
            key = (job.lane.value, job.tenant)
            tally = cells.get(key)
            if tally is None:
                tally = cells[key] = Tally()
            action = outcome.action
            if action is Action.COMPLETE:
                start = facts.send_at(job.payload) or job.enqueued_at
                latency = max(0.0, at - start)
                tally.sent += 1
                tally.latency.add(latency)
                self._wedding(job.payload, latency, "sent")
            elif action is Action.BURY:
                tally.failed += 1
                self._wedding(job.payload, None, "failed")
            elif action is Action.RETRY:
                tally.retried += 1
                self._wedding(job.payload, None, "retried")
            elif action is Action.DEFER and outcome.error not in PACING_ERRORS:
                tally.deferred += 1

    def record_send(self, provider: str, seconds: float, result: SendResult) -> None:
        """The providers' send observer (``Provider.observe_sends``): one message's try."""
        tally = self.window.sends.get(provider)
        if tally is None:
            tally = self.window.sends[provider] = Tally()
        if isinstance(result, Accepted):
            tally.sent += 1
            tally.latency.add(seconds)
        elif isinstance(result, Permanent):
            tally.failed += 1
        elif isinstance(result, Transient):
            if result.provider_down:
                tally.deferred += 1
            else:
                tally.retried += 1

    def _wedding(self, payload: bytes, latency: float | None, what: str) -> None:
        wedding = facts.wedding_id(payload)
        if wedding is None:
            return
        tally = self.window.weddings.get(wedding)
        if tally is None:
            tally = self.window.weddings[wedding] = Tally()
        setattr(tally, what, getattr(tally, what) + 1)
        if latency is not None:
            tally.latency.add(latency)

    def take(self) -> Window:
        """The window so far; a new one starts now."""
        window, self.window = self.window, Window(self.clock())
        return window

    def give_back(self, window: Window) -> None:
        """A window that could not be published goes into the next one."""
        self.window.merge(window)


async def publish_forever(
    recorder: Recorder,
    publish: Callable[[bytes], None],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Every ``interval_s`` (and once more at ``stop``) publish the window, empty or not:
    an empty one is the worker's heartbeat."""
    failing = False
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        window = recorder.take()
        body = sample_body(window, recorder.worker, recorder.provider, recorder.clock())
        try:
            await asyncio.to_thread(publish, body)
            failing = False
        except Exception as error:
            recorder.give_back(window)
            if not failing:  # once per outage, not every few seconds
                log.warning("publishing monitor samples failed (%s); keeping them",
                            type(error).__name__)  # fmt: skip
            failing = True
        if stop.is_set():
            return
