"""The provider contract (docs/architecture.md §3): ``send_batch(rendered) -> results``,
one per message.

A result is ``Accepted`` (the provider took it), ``Transient`` (try again later: SMTP 4xx,
connection trouble, HTTP 429/5xx) or ``Permanent`` (will never succeed: SMTP 5xx, HTTP 4xx).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class Transient:
    reason: str
    retry_after: float | None = None
    unsure: bool = False  # the provider may have carried the send out (a timeout, a 5xx)


@dataclass(frozen=True, slots=True)
class Permanent:
    reason: str


SendResult = Accepted | Transient | Permanent


class Provider(abc.ABC):
    name: str = "provider"

    @abc.abstractmethod
    async def send_batch(self, batch: Sequence[Rendered]) -> list[SendResult]:
        """Send every message; never raises for a message's own failure."""

    async def close(self) -> None:  # noqa: B027 - providers without resources need not override
        """Release connections."""
