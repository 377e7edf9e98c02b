"""The provider contract (docs/architecture.md §3): ``send_batch(rendered, gate) -> results``,
one per message.

A result is ``Accepted`` (the provider took it), ``Transient`` (try again later: SMTP 4xx,
connection trouble, HTTP 429/5xx), ``Permanent`` (will never succeed: SMTP 5xx, HTTP 4xx)
or ``Withheld`` (never put on the wire: the gate said no).

The **gate** is how the worker reaches the wire. A provider asks ``gate.may_send(id)``
immediately before each message goes out (SMTP ``MAIL FROM``, each HTTP call) — a worker
whose lease may have lapsed (it was paused, the broker moved the message) answers no, so
a process that wakes up sends nothing it no longer owns — and reports each outcome with
``gate.done(index, result)`` as soon as it is known, so the worker can settle mail as it
goes out instead of once per batch.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One message ready for the wire."""

    message_id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes  # RFC 5322 bytes with CRLF line endings
    idempotency_key: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # the email's tags, for providers that take them


@dataclass(frozen=True, slots=True)
class Accepted:
    provider_id: str = ""
    refused: str = ""  # recipients the server refused for good while taking the rest


@dataclass(frozen=True, slots=True)
class Transient:
    reason: str
    retry_after: float | None = None
    unsure: bool = False  # the provider may have carried the send out (a timeout, a 5xx)
    # The provider itself is unreachable or refuses us (connection refused, TLS, 421, a
    # refused login or API key): nothing about this message. It spends no attempt, and the
    # worker pauses the provider instead of burning every queued message's attempts.
    provider_down: bool = False
    # Our own code failed on this message (a bug, an input no check foresaw): retried a
    # few times, then buried, so one poison message cannot circle forever.
    unexpected: bool = False
    # The message went to the other recipients: the next attempt goes to these alone.
    recipients: tuple[str, ...] | None = None
    # The provider refused our credentials (SMTP 535, HTTP 401/403 for the key): an
    # operator must act; a provider chain fails over at once and alerts.
    credentials_refused: bool = False


@dataclass(frozen=True, slots=True)
class Permanent:
    reason: str


@dataclass(frozen=True, slots=True)
class Withheld:
    """Not sent: the gate said no (the lease may have lapsed, or the worker is stopping)."""

    reason: str = "withheld"


SendResult = Accepted | Transient | Permanent | Withheld


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """What a provider's health check found (a chain fails over on these)."""

    ok: bool
    reason: str = ""
    credentials_refused: bool = False


class SendGate(Protocol):
    async def may_send(self, message_id: str) -> bool:
        """True while this process still owns the message, with a margin for one send.
        May wait first (the worker bounds how much sent mail is not yet settled)."""

    def done(self, index: int, result: SendResult) -> None:
        """The outcome of ``batch[index]``, as soon as it is known."""


class OpenGate:
    """Every message may go; outcomes are only returned (tests, tools)."""

    async def may_send(self, message_id: str) -> bool:
        return True

    def done(self, index: int, result: SendResult) -> None:
        pass


OPEN_GATE = OpenGate()

# (provider name, seconds from the gate's yes to the outcome, the outcome): the monitor's
# per-provider send latency. Called on the event loop for every message sent: cheap only.
SendObserver = Callable[[str, float, SendResult], None]


class _Reporting:
    """Passes outcomes on once each, so the batch's end can report what a provider did not;
    with an observer, times each message from the gate's yes to its outcome."""

    def __init__(self, gate: SendGate, batch: Sequence[Rendered] = (), name: str = "",
                 observer: SendObserver | None = None) -> None:  # fmt: skip
        self.gate = gate
        self.reported: set[int] = set()
        self.batch = batch
        self.name = name
        self.observer = observer
        self.started: dict[str, float] = {}  # message id → monotonic time it went out

    async def may_send(self, message_id: str) -> bool:
        allowed = await self.gate.may_send(message_id)
        if allowed and self.observer is not None:
            self.started[message_id] = time.monotonic()
        return allowed

    def done(self, index: int, result: SendResult) -> None:
        if index not in self.reported:
            self.reported.add(index)
            if self.observer is not None and 0 <= index < len(self.batch):
                started = self.started.pop(self.batch[index].message_id, None)
                if started is not None:
                    self.observer(self.name, time.monotonic() - started, result)
            self.gate.done(index, result)


class Provider(abc.ABC):
    name: str = "provider"
    # Messages this provider can have on the wire at once (an SMTP pool's connections);
    # None: no such bound (one HTTP call carries a whole batch).
    concurrency: int | None = None
    # Sends an unsure call again itself, with the same idempotency key (Resend): a chain
    # need not ask it again before the message may move on.
    retries_unsure: bool = False
    _observer: SendObserver | None = None

    def observe_sends(self, observer: SendObserver | None) -> None:
        """Report each message's send time and outcome to ``observer`` (the monitor)."""
        self._observer = observer

    async def send_batch(
        self, batch: Sequence[Rendered], gate: SendGate = OPEN_GATE
    ) -> list[SendResult]:
        """Send every message the gate lets through; never raises for a message's failure.

        Each outcome reaches ``gate.done`` exactly once. An exception escaping a provider
        (a bug) becomes an ``unexpected`` transient result for the messages it left without
        an outcome, instead of failing the batch (whose other mail may be out already).
        """
        reporting = _Reporting(gate, batch, self.name, self._observer)
        try:
            results = await self._send(batch, reporting)
        except Exception as error:
            log.exception("%s failed on a batch of %d", self.name, len(batch))
            failed = Transient(f"unexpected {type(error).__name__}", unsure=True, unexpected=True)
            results = [failed] * len(batch)
        if len(results) != len(batch):  # a provider bug must not lose track of mail
            log.error("%s answered %d results for %d messages", self.name, len(results),
                      len(batch))  # fmt: skip
            results = [Transient("provider returned no result", unexpected=True)] * len(batch)
        for index, result in enumerate(results):
            reporting.done(index, result)
        return results

    @abc.abstractmethod
    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        """Send the batch: ask ``gate.may_send`` right before each message goes out, and
        call ``gate.done`` as outcomes become known (those not reported are reported from
        the returned list)."""

    def size_like(self, other: Provider) -> None:  # noqa: B027 - most have no pool to size
        """Keep as many connections open as ``other`` finds useful (a worker's express
        provider follows its bulk one, which sends enough to measure the relay by)."""

    async def start(self) -> None:  # noqa: B027 - most providers have nothing to start
        """Begin background work (a chain's health checks), in the worker's event loop;
        sending starts it too, for callers that never call this."""

    async def check(self) -> HealthCheck:
        """A cheap end-to-end check of the provider (log in, say hello), sending nothing.
        Providers without a server to ask are always healthy."""
        return HealthCheck(ok=True)

    async def close(self) -> None:  # noqa: B027 - providers without resources need not override
        """Release connections."""
