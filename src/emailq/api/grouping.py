"""Group commit for intake: enqueues that arrive together share one broker call.

While one ``enqueue_many`` is running on its thread, requests that arrive queue up and go
together in the next call. Under load that turns a fsync (SQLite) or a round trip (Redis)
per request into one per group, with no timer and so no added latency when idle. A
request's messages are never split between calls: a batch stays all-or-nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from emailq.broker import Broker, NewMessage

Pending = tuple[Sequence[NewMessage], "asyncio.Future[list[str]]"]


class EnqueueGroup:
    def __init__(self, broker: Broker, max_messages: int = 2000) -> None:
        self.broker = broker
        self.max_messages = max_messages
        self._pending: deque[Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue(self, messages: Sequence[NewMessage]) -> list[str]:
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    def _take_group(self) -> list[Pending]:
        group: list[Pending] = [self._pending.popleft()]
        size = len(group[0][0])
        while self._pending and size + len(self._pending[0][0]) <= self.max_messages:
            size += len(self._pending[0][0])
            group.append(self._pending.popleft())
        return group

    async def _flush(self) -> None:
        while self._pending:
            group = self._take_group()
            flat = [message for messages, _ in group for message in messages]
            try:
                ids = await asyncio.to_thread(self.broker.enqueue_many, flat)
            except Exception as error:  # every request of the group hears of it
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            offset = 0
            for messages, future in group:
                if not future.done():  # the client may have gone away meanwhile
                    future.set_result(ids[offset : offset + len(messages)])
                offset += len(messages)
