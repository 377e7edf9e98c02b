"""Webhook endpoints and their deliveries, kept beside the queue (a few tables in the SQLite
file, or keys under the Redis queue's prefix), like the API keys and the batch records.

A delivery is queued work of its own: ``pending`` (due at ``next_at``), then ``delivered``
or, after retries for up to ``webhooks.max_age_s``, ``failed``. There is one delivery per
(endpoint, event): adding the same event again (a dispatcher that re-read its feed after a
crash) stores nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

EVENT_TYPES = ("email.sent", "email.failed", "email.dead", "email.cancelled", "batch.completed")
CLAIM_S = 60.0  # a claimed delivery is the sender's this long (a crashed sender's comes back)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float

    def public(self) -> dict[str, object]:
        """What the API shows of it after creation: everything but the secret."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "created_at": self.created_at}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str  # stable: the webhook-id header of every attempt
    type: str
    body: str  # the JSON posted, the same bytes at every attempt
    state: DeliveryState
    attempts: int
    created_at: float
    next_at: float
    last_error: str | None = None

    def public(self) -> dict[str, object]:
        return {"id": self.id, "event_id": self.event_id, "type": self.type,
                "state": self.state.value, "attempts": self.attempts,
                "created_at": self.created_at, "next_at": self.next_at,
                "last_error": self.last_error}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settlement:
    """An attempt's outcome, to be written: delivered, failed, or pending from ``next_at``."""

    delivery_id: str
    state: DeliveryState
    next_at: float
    error: str | None = None


class WebhookStore(abc.ABC):
    # -- endpoints --------------------------------------------------------------------
    @abc.abstractmethod
    def add_endpoint(self, endpoint: Endpoint) -> None: ...

    @abc.abstractmethod
    def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    @abc.abstractmethod
    def endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        """A tenant's endpoints, or every tenant's."""

    @abc.abstractmethod
    def remove_endpoint(self, endpoint_id: str) -> bool: ...

    # -- deliveries -------------------------------------------------------------------
    @abc.abstractmethod
    def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """Store new deliveries; those whose (endpoint, event) is stored already are
        skipped. Returns how many were stored."""

    @abc.abstractmethod
    def claim_due(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries due by ``now``, each then held for :data:`CLAIM_S`."""

    @abc.abstractmethod
    def postpone(self, delivery_ids: Sequence[str], next_at: float) -> None:
        """Pending again from ``next_at``, no attempt spent (its receiver is paused)."""

    def settle(
        self, delivery: Delivery, state: DeliveryState, now: float, next_at: float,
        error: str | None,
    ) -> None:  # fmt: skip
        """After an attempt: delivered, failed, or pending again from ``next_at``."""
        self.settle_many([Settlement(delivery.id, state, next_at, error)])

    @abc.abstractmethod
    def settle_many(self, settlements: Sequence[Settlement]) -> None:
        """Several attempts' outcomes in one write (the sender's requests in flight finish
        together; one write per attempt cost more than the attempt)."""

    @abc.abstractmethod
    def deliveries(
        self, endpoint_id: str, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        """An endpoint's deliveries, newest first."""

    # -- the dispatcher's place in the feed ---------------------------------------------
    @abc.abstractmethod
    def cursor(self) -> str: ...

    @abc.abstractmethod
    def save_cursor(self, cursor: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - a store on a shared connection has nothing to close
        """Release what the store opened itself."""
