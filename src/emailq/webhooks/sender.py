"""Posting deliveries: signed, never following a redirect, over a client that checks the
receiver's addresses on every connection it opens and connects to those (webhooks/pinned.py);
a failure is retried with backoff until the delivery is a day old
(``webhooks.max_age_s``), then it is ``failed``. Its own HTTP client, its own concurrency
limit, its own process: nothing here waits on, or holds up, mail delivery."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import httpx

from emailq.webhooks.pauses import EndpointPauses
from emailq.webhooks.pinned import pinned_client
from emailq.webhooks.signing import signed_headers
from emailq.webhooks.ssrf import Resolver, UrlRefused
from emailq.webhooks.store import Delivery, DeliveryState, Endpoint, WebhookStore

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600.0  # retries at least hourly until the delivery's age runs out
MAX_ERROR_CHARS = 300


class Sender:
    def __init__(
        self,
        store: WebhookStore,
        *,
        concurrency: int = 16,
        timeout_s: float = 10.0,
        max_age_s: float = 86400.0,
        allow_private: bool = False,
        retry_base_s: float = 5.0,
        resolve: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """Retries wait ``retry_base_s``, then twice as long each time, up to an hour.
        ``resolve`` and ``verify``: a resolver and a TLS trust of the tests' own."""
        self.store = store
        self.concurrency = concurrency
        self.max_age_s = max_age_s
        self.allow_private = allow_private
        self.retry_base_s = retry_base_s
        self._http = pinned_client(allow_private, timeout_s, resolve, verify)
        self._endpoints: dict[str, Endpoint | None] = {}
        self.pauses = EndpointPauses(base_s=min(retry_base_s, 1.0))

    async def step(self) -> int:
        """Send what is due, up to ``concurrency`` at once; returns how many were tried."""
        now = time.time()
        due = await asyncio.to_thread(self.store.claim_due, now, self.concurrency)
        self._endpoints.clear()  # an endpoint removed stops getting deliveries at once
        tried, held = self._tried_and_held(due, now)
        for until, ids in held.items():
            await asyncio.to_thread(self.store.postpone, ids, until)
        await asyncio.gather(*(self._attempt(delivery) for delivery in tried))
        return len(tried)

    def _tried_and_held(
        self, due: list[Delivery], now: float
    ) -> tuple[list[Delivery], dict[float, list[str]]]:
        """What to send now, and what waits for its paused (or suspect) receiver."""
        tried: list[Delivery] = []
        held: dict[float, list[str]] = {}
        probing: set[str] = set()
        for delivery in due:
            endpoint_id = delivery.endpoint_id
            until = self.pauses.held_until(endpoint_id, now)
            if until is None and endpoint_id in probing:
                until = now + self.pauses.base_s  # after the probe's answer
            if until is not None:
                held.setdefault(until, []).append(delivery.id)
                continue
            if self.pauses.suspect(endpoint_id):
                probing.add(endpoint_id)
            tried.append(delivery)
        return tried, held

    async def _attempt(self, delivery: Delivery) -> None:
        endpoint = await self._endpoint(delivery.endpoint_id)
        if endpoint is None:
            await self._settle(delivery, DeliveryState.FAILED, "the endpoint was removed")
            return
        try:
            refusal = await self._post(endpoint, delivery)
        except UrlRefused as error:  # its host now resolves inward: never sent there
            await self._settle(delivery, DeliveryState.FAILED, f"refused: {error}")
            return
        if refusal is None:
            self.pauses.succeeded(endpoint.id)
            await self._settle(delivery, DeliveryState.DELIVERED, None)
        else:
            self.pauses.failed(endpoint.id, time.time())
            await self._failed(delivery, refusal)

    async def _post(self, endpoint: Endpoint, delivery: Delivery) -> str | None:
        """None when the receiver took it (any 2xx); else why not."""
        headers = signed_headers(endpoint.secret, delivery.event_id, time.time(), delivery.body)
        try:
            response = await self._http.post(
                endpoint.url, content=delivery.body.encode(), headers=headers
            )
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        if 200 <= response.status_code < 300:
            return None
        if response.is_redirect:
            return f"HTTP {response.status_code}: redirects are not followed"
        return f"HTTP {response.status_code}"

    async def _failed(self, delivery: Delivery, error: str) -> None:
        now = time.time()
        delay = min(MAX_BACKOFF_S, self.retry_base_s * 2.0 ** min(delivery.attempts, 20))
        if now + delay - delivery.created_at > self.max_age_s:
            log.warning("webhook %s failed for good: %s", delivery.id, error)
            await self._settle(delivery, DeliveryState.FAILED, error)
            return
        await asyncio.to_thread(
            self.store.settle, delivery, DeliveryState.PENDING, now, now + delay, error
        )

    async def _settle(self, delivery: Delivery, state: DeliveryState, error: str | None) -> None:
        now = time.time()
        await asyncio.to_thread(self.store.settle, delivery, state, now, now, error)

    async def _endpoint(self, endpoint_id: str) -> Endpoint | None:
        if endpoint_id not in self._endpoints:
            self._endpoints[endpoint_id] = await asyncio.to_thread(self.store.endpoint, endpoint_id)
        return self._endpoints[endpoint_id]

    async def aclose(self) -> None:
        await self._http.aclose()
