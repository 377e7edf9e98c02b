"""How many SMTP connections a provider keeps, and which one a message goes out on.

An explicit ``?pool=N`` is a fixed size. Without it the pool sizes itself
(:class:`PoolSizer`): it starts with a few connections and, while messages wait for a free
one, grows a step at a time for as long as the measured reply time says the extra
connections add throughput. By Little's law N connections that each take L seconds per
message carry N / L messages a second: while L stays flat as N grows, the relay works on
them side by side and more connections help; once L grows as fast as N, the relay or this
process is the limit and more connections only hold more of the relay's slots.

Either way, a relay that turns a connection away (421 at connect, or a refused connect)
while others of the same pool work is saying the pool is too big, not that it is down
(Postfix allows 50 connections per client by default): the pool keeps at most the
connections that work, and the message goes out on one of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

import aiosmtplib

log = logging.getLogger(__name__)

AUTO_START = 4  # connections an automatic pool starts with
# An automatic pool's ceiling: a relay 5 ms away (4 round trips an email) carries about
# 123,000/min on 2 workers × 32 connections, 179,000 × 64 (benchmarks/e2e.py --relay-ms 5).
AUTO_MAX = 64
GROWTH = 1.5  # each step opens this many times the connections (at least one more)
MIN_GAIN = 1.1  # a step is kept if N / L grew by this much; else the pool steps back
# A size settled on is kept this long before the next step up is tried: twice as long
# after each step that did not pay (a busy machine can make one look so), up to the most.
HOLD_MIN_S = 2.0
HOLD_MAX_S = 60.0
# Reply times a decision rests on: at least this many, and four per connection.
MIN_SAMPLES = 64


class PoolSizer:
    """The number of connections a pool may have open (``limit``), up to ``ceiling``."""

    def __init__(
        self,
        start: int = AUTO_START,
        ceiling: int = AUTO_MAX,
        *,
        fixed: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.limit = min(start, ceiling)
        self.fixed = fixed
        self._clock = clock
        self.epoch = 0  # which limit a reply time was measured at
        self._busy_s = 0.0
        self._samples = 0
        self._below: tuple[int, float] | None = None  # (limit, N / L) of the step below
        self._hold_until = -math.inf
        self._hold_s = HOLD_MIN_S

    @classmethod
    def of_size(cls, size: int) -> PoolSizer:
        """An explicit ``?pool=N``: that many connections, never more."""
        return cls(size, size, fixed=True)

    def measured(self, epoch: int, reply_s: float) -> bool:
        """One transaction's reply time (MAIL to the reply to DATA), sent while other
        messages waited for a connection at limit ``epoch``. True when the limit changed."""
        if self.fixed or epoch != self.epoch or self._clock() < self._hold_until:
            return False
        self._busy_s += reply_s
        self._samples += 1
        if self._samples < max(MIN_SAMPLES, 4 * self.limit):
            return False
        rate = self.limit * self._samples / max(self._busy_s, 1e-9)  # Little's law: N / L
        below, self._below = self._below, None
        log.debug("pool of %d: %.1f ms a reply, %.0f/s; the step below: %s", self.limit,
                  self._busy_s / self._samples * 1000, rate, below)  # fmt: skip
        if below is None or rate >= below[1] * MIN_GAIN:  # the last step paid: try the next
            if below is not None:
                self._hold_s = HOLD_MIN_S
            if self.limit < self.ceiling:
                self._below = (self.limit, rate)
                return self._set(min(self.ceiling, max(self.limit + 1, round(self.limit * GROWTH))))
            return self._hold()
        # The last step did not pay: back to the size below, for a while.
        self._set(below[0])
        self._hold()
        self._hold_s = min(HOLD_MAX_S, self._hold_s * 2)
        return True

    def shrink_to(self, working: int) -> bool:
        """The relay turned a connection away while ``working`` others worked: that is as
        many as it takes from us. True when the limit changed."""
        self.ceiling = max(1, min(self.ceiling, working))
        self._below = None
        changed = self.limit > self.ceiling and self._set(self.ceiling)
        self._hold()
        return changed

    def _set(self, limit: int) -> bool:
        changed = limit != self.limit
        self.limit = limit
        self.epoch += 1
        self._busy_s, self._samples = 0.0, 0
        return changed

    def _hold(self) -> bool:
        self._hold_until = self._clock() + self._hold_s
        self.epoch += 1
        self._busy_s, self._samples = 0.0, 0
        return False


class Connections:
    """The pool's aiosmtplib clients: handed out one at a time, at most ``sizer.limit``.

    A client is made unconnected; whoever sends on it connects it (and tells :meth:`opened`
    how that went), so a dropped connection is reopened on its next message.
    """

    def __init__(self, make: Callable[[], aiosmtplib.SMTP], sizer: PoolSizer) -> None:
        self._make = make
        self.sizer = sizer
        self.created = 0  # clients in existence, idle or handed out
        self._idle: deque[aiosmtplib.SMTP] = deque()
        self._waiting: deque[asyncio.Future[aiosmtplib.SMTP]] = deque()
        self._greeted: set[aiosmtplib.SMTP] = set()  # connected, greeted, logged in
        self._opening = 0
        self._open_ended: list[asyncio.Future[None]] = []

    async def checkout(self) -> aiosmtplib.SMTP:
        if self._idle:
            return self._idle.popleft()
        if self.created < self.sizer.limit:
            self.created += 1
            return self._make()
        waiter: asyncio.Future[aiosmtplib.SMTP] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over as it was cancelled
                self.give_back(waiter.result())
            raise

    def give_back(self, client: aiosmtplib.SMTP) -> None:
        if self.created > self.sizer.limit:  # the pool shrank: this one goes
            self.retire(client)
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(client)
                return
        self._idle.append(client)

    def retire(self, client: aiosmtplib.SMTP) -> None:
        self._greeted.discard(client)
        client.close()
        self.created -= 1

    def grown(self) -> None:
        """The limit went up: sends waiting for a connection get new ones at once."""
        while self.created < self.sizer.limit and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                self.created += 1
                waiter.set_result(self._make())

    def opening(self, client: aiosmtplib.SMTP) -> None:
        self._greeted.discard(client)
        self._opening += 1

    def opened(self, client: aiosmtplib.SMTP, ok: bool) -> None:
        self._opening -= 1
        if ok:
            self._greeted.add(client)
        ended, self._open_ended = self._open_ended, []
        for waiter in ended:
            if not waiter.done():
                waiter.set_result(None)

    def working(self, besides: aiosmtplib.SMTP) -> int:
        """Other clients of this pool that got through their greeting and are connected."""
        return sum(1 for c in self._greeted if c is not besides and c.is_connected)

    async def others_work(self, refused: aiosmtplib.SMTP) -> int:
        """How many other connections work, once those being opened now have got their
        answers (opened side by side, the refused one's answer may come first)."""
        while self._opening:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._open_ended.append(waiter)
            await waiter
        return self.working(refused)

    def drain_idle(self) -> list[aiosmtplib.SMTP]:
        """Take every idle client (to close them); the pool starts afresh."""
        idle = list(self._idle)
        self._idle.clear()
        self._greeted.clear()
        self.created = 0
        return idle
