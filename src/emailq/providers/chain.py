"""An ordered chain of providers: send through the first healthy one, fail over at once.

Which providers are healthy is the :class:`~emailq.failover.HealthBoard`'s to say (health
checks and a circuit breaker, shared by the workers of the queue). Within one batch, a
message whose send failed transiently goes to the next healthy provider at once instead
of waiting out its backoff. What does not move:

- an outcome that may have been carried out (``unsure``: a timeout after DATA, a Resend
  5xx): first sent again through the same provider, the same message with the same
  idempotency key (a provider that keeps its record of the key, or a receiving server
  that knows the Message-ID, drops the copy; another provider would surely send a second
  one). A provider that does this itself (Resend) is not asked again. Only if that try
  finds the provider down does the message move on; still unsure, it is retried later
  as usual;
- a permanent refusal (SMTP 5xx on RCPT): final;
- a failure in emailq itself (``unexpected``), and mail the gate withheld.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from emailq.failover.board import HealthBoard
from emailq.providers.base import (
    HealthCheck,
    Provider,
    Rendered,
    SendGate,
    SendObserver,
    SendResult,
    Transient,
)

UNSURE_PAUSE_S = 0.5  # before the first send again of an unsure outcome, then doubling


def movable(result: SendResult) -> bool:
    """May this outcome be tried through the next provider at once?"""
    return isinstance(result, Transient) and not result.unsure and not result.unexpected


def unsure(result: SendResult) -> bool:
    """May the provider have carried this send out (so only it may be asked again)?"""
    return isinstance(result, Transient) and result.unsure and not result.unexpected


def _renamed(observer: SendObserver, name: str) -> SendObserver:
    return lambda _, seconds, result: observer(name, seconds, result)


class _Hold:
    """The worker's gate seen by one provider of the chain: outcomes that may move on are
    held back (the next provider may still deliver them), and so are unsure ones while
    this provider is to be asked again; the rest are reported at once."""

    def __init__(self, gate: SendGate, indices: Sequence[int], board: HealthBoard,
                 name: str, keep_unsure: bool) -> None:  # fmt: skip
        self.gate = gate
        self.indices = indices  # this provider's batch position → the chain's
        self.board = board
        self.name = name
        self.keep_unsure = keep_unsure
        self.held: dict[int, Transient] = {}  # the chain's index → outcome
        self.unsure: dict[int, Transient] = {}

    async def may_send(self, message_id: str) -> bool:
        return await self.gate.may_send(message_id)

    def done(self, index: int, result: SendResult) -> None:
        self.board.note(self.name, result)
        position = self.indices[index]
        if isinstance(result, Transient) and movable(result):
            self.held[position] = result
        elif isinstance(result, Transient) and self.keep_unsure and unsure(result):
            self.unsure[position] = result
        else:
            self.gate.done(position, result)


class ProviderChain(Provider):
    def __init__(self, members: Sequence[Provider], names: Sequence[str],
                 board: HealthBoard, unsure_retries: int = 1) -> None:  # fmt: skip
        self.members = list(members)
        self.names = list(names)
        self.board = board
        self.unsure_retries = unsure_retries
        self.name = "chain"
        # No window of unsettled mail in the worker: a message held for the next provider
        # keeps its place in that window until it is settled, so two batches failing over
        # at once could each wait for room the other holds. Each member's own connections
        # still bound what is on the wire.
        self.concurrency = None
        self._started = False

    def observe_sends(self, observer: SendObserver | None) -> None:
        """Each member reports under its name in the chain; the chain itself reports nothing."""
        for member, name in zip(self.members, self.names, strict=True):
            member.observe_sends(None if observer is None else _renamed(observer, name))

    def size_like(self, other: Provider) -> None:
        if isinstance(other, ProviderChain):
            for mine, theirs in zip(self.members, other.members, strict=False):
                mine.size_like(theirs)

    async def start(self) -> None:
        if not self._started:
            self._started = True
            self.board.start()

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        await self.start()
        messages = list(batch)
        results: list[SendResult | None] = [None] * len(batch)
        waiting = list(range(len(batch)))
        last: dict[int, Transient] = {}
        for member in self.board.order():
            if not waiting:
                break
            held = await self._through(member, waiting, messages, gate, results)
            last.update(held)
            for position, failed in held.items():
                if failed.recipients is not None:  # the others took it: only these move on
                    messages[position] = replace(messages[position], recipients=failed.recipients)
            waiting = sorted(held)
        for position in waiting:  # no provider left to try: retried as usual
            gate.done(position, last[position])
        return [result for result in results if result is not None]

    async def _through(
        self,
        member: int,
        positions: list[int],
        messages: list[Rendered],
        gate: SendGate,
        results: list[SendResult | None],
    ) -> dict[int, Transient]:
        """Send ``positions`` through one member, and what may have gone out through it
        again (the same Rendered: the same idempotency key) before it may go anywhere else.
        Returns the outcomes that may move to the next member."""
        provider = self.members[member]
        retries = 0 if provider.retries_unsure else self.unsure_retries
        held: dict[int, Transient] = {}
        for attempt in range(retries + 1):
            hold = _Hold(gate, positions, self.board, self.names[member],
                         keep_unsure=attempt < retries)  # fmt: skip
            sent = await provider.send_batch([messages[i] for i in positions], hold)
            for position, result in zip(positions, sent, strict=True):
                results[position] = result
            held.update(hold.held)
            positions = sorted(hold.unsure)
            if not positions:
                break
            await asyncio.sleep(UNSURE_PAUSE_S * 2**attempt)
        return held

    async def check(self) -> HealthCheck:
        down = [n for n in self.names if (r := self.board.health.get(n)) and r.down]
        if len(down) == len(self.names):
            return HealthCheck(ok=False, reason="every provider is down")
        return HealthCheck(ok=True)

    async def close(self) -> None:
        for member in self.members:
            await member.close()
        if self._started:
            self._started = False
            await self.board.stop()
