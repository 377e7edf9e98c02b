"""The fan-out: new audit events (``Broker.events_after``) → one delivery per endpoint of
the event's tenant subscribed to its type, and ``batch.completed`` once a batch has nothing
left to deliver. Its place in the feed is saved after the deliveries: after a crash it
reads some events again, and the store keeps one delivery per (endpoint, event).
"""

from __future__ import annotations

import time
from collections import defaultdict

from emailq.batches.status import BatchView
from emailq.broker import Broker
from emailq.webhooks.events import FINAL_KINDS, batch_completed, email_event
from emailq.webhooks.store import Delivery, DeliveryState, Endpoint, WebhookStore

READ_LIMIT = 2000  # feed events per step


class Dispatcher:
    def __init__(self, broker: Broker, store: WebhookStore) -> None:
        self.broker = broker
        self.store = store
        self._endpoints: dict[str, list[Endpoint]] = {}

    def _load_endpoints(self) -> None:
        """Read after the events, every step: an endpoint registered before an event was
        written is then always seen (a cache could miss one for the events read meanwhile)."""
        by_tenant: dict[str, list[Endpoint]] = defaultdict(list)
        for endpoint in self.store.endpoints():
            by_tenant[endpoint.tenant].append(endpoint)
        self._endpoints = by_tenant

    def _subscribers(self, tenant: str, kind: str, at: float) -> list[Endpoint]:
        """The tenant's endpoints for ``kind`` that existed at ``at``: an endpoint is told
        of what happens after it was registered, not of the past."""
        return [
            e for e in self._endpoints.get(tenant, []) if kind in e.events and e.created_at <= at
        ]

    def step(self) -> int:
        """Read the next events and queue their deliveries; returns how many events were read."""
        fed = self.broker.events_after(self.store.cursor(), READ_LIMIT)
        if not fed:
            return 0
        self._load_endpoints()
        now = time.time()
        deliveries: list[Delivery] = []
        finished: dict[str, str] = {}  # batch id → tenant, for batches a final event touched
        for event in fed:
            made = email_event(event)
            if made is not None:
                deliveries += self._deliveries(event.tenant, *made, now, event.event.at)
            if event.batch_id and event.event.kind in FINAL_KINDS:
                finished[event.batch_id] = event.tenant
        for batch_id, tenant in finished.items():
            deliveries += self._completed(batch_id, tenant, now)
        self.store.add_deliveries(deliveries)
        self.store.save_cursor(fed[-1].cursor)
        return len(fed)

    def _completed(self, batch_id: str, tenant: str, now: float) -> list[Delivery]:
        if not self._subscribers(tenant, "batch.completed", now):
            return []
        view = BatchView.of(self.broker.batch_members(batch_id))
        if not view.complete():
            return []
        made = batch_completed(batch_id, now, view.summary())
        return self._deliveries(tenant, *made, now, now)

    def _deliveries(
        self, tenant: str, event_id: str, kind: str, body: str, now: float, at: float
    ) -> list[Delivery]:
        return [
            Delivery(id=f"{endpoint.id}.{event_id}", endpoint_id=endpoint.id, event_id=event_id,
                     type=kind, body=body, state=DeliveryState.PENDING, attempts=0,
                     created_at=now, next_at=now)
            for endpoint in self._subscribers(tenant, kind, at)
        ]  # fmt: skip
