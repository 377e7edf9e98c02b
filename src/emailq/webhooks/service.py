"""``emailq webhooks``: the dispatcher and the sender, each in its own loop, in a process of
their own (never a mail worker's)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from emailq.broker import Broker
from emailq.settings import WebhookSection
from emailq.webhooks.dispatcher import Dispatcher
from emailq.webhooks.sender import Sender
from emailq.webhooks.store import WebhookStore

log = logging.getLogger(__name__)


async def run(
    broker: Broker, store: WebhookStore, settings: WebhookSection, stop: asyncio.Event,
    sender: Sender | None = None,
) -> None:  # fmt: skip
    """Until ``stop`` is set. ``sender``: one built by the caller (tests: a short age)."""
    dispatcher = Dispatcher(broker, store)
    sender = sender or Sender(
        store, concurrency=settings.concurrency, timeout_s=settings.timeout_s,
        max_age_s=settings.max_age_s, allow_private=settings.allow_private_urls,
        retry_base_s=settings.retry_base_s, poll_s=settings.poll_s,
    )  # fmt: skip
    queued = asyncio.Event()  # the dispatcher queued deliveries: the sender need not wait

    async def dispatch() -> int:
        busy = await asyncio.to_thread(dispatcher.step)
        if busy:
            queued.set()
        return busy

    try:
        await asyncio.gather(
            _loop(dispatch, settings.poll_s, stop, "dispatch"),
            _loop(sender.step, settings.poll_s, stop, "send", queued),
        )
    finally:
        await sender.aclose()


async def _loop(
    step: Callable[[], Awaitable[int]], pause_s: float, stop: asyncio.Event, name: str,
    wake: asyncio.Event | None = None,
) -> None:  # fmt: skip
    """``step`` until ``stop``; after an idle step, a pause that ``wake`` (if any) cuts short."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            busy = await step()
        except Exception:  # the queue down for a moment: log it and try again
            log.exception("webhook %s step failed", name)
            busy = 0
        if not busy:
            waits = [asyncio.ensure_future(stop.wait())]
            if wake is not None:
                waits.append(asyncio.ensure_future(wake.wait()))
            _, pending = await asyncio.wait(
                waits, timeout=pause_s, return_when=asyncio.FIRST_COMPLETED
            )
            for waiting in pending:
                waiting.cancel()
