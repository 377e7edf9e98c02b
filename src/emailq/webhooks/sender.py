"""Posting deliveries: signed, one event per POST, never following a redirect, over
connections opened only to addresses checked at that moment (webhooks/poster.py); a
failure is retried with backoff until the delivery is a day old (``webhooks.max_age_s``),
then it is ``failed``. Its own HTTP client, its own concurrency limit, its own process:
nothing here waits on, or holds up, mail delivery.

It costs little per event because nothing is done one event at a time that can be done
for a group: up to ``concurrency`` requests stay in flight (each on a keep-alive
connection of its own); deliveries are claimed once half of those slots are free, and the
finished attempts are written to the store together, in one call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from emailq.webhooks.pauses import EndpointPauses
from emailq.webhooks.poster import Poster, PostFailed
from emailq.webhooks.signing import signed_headers
from emailq.webhooks.ssrf import Resolver, UrlRefused
from emailq.webhooks.store import Delivery, DeliveryState, Endpoint, Settlement, WebhookStore

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
        poll_s: float = 0.5,
    ) -> None:
        """Retries wait ``retry_base_s``, then twice as long each time, up to an hour.
        ``resolve`` and ``verify``: a resolver and a TLS trust of the tests' own."""
        self.store = store
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.allow_private = allow_private
        self.retry_base_s = retry_base_s
        self.poll_s = poll_s
        self._http = Poster(allow_private, timeout_s, resolve, verify)
        self.pauses = EndpointPauses(base_s=min(retry_base_s, 1.0))
        self._in_flight: set[asyncio.Task[None]] = set()
        self._probing: set[str] = set()  # endpoints a probe is in flight to
        self._finished: list[Settlement] = []  # attempts done, not yet written

    async def step(self) -> int:
        """Write the finished attempts, start due ones while slots are free, wait for one
        to finish; returns 0 when there was nothing to do (the caller pauses then)."""
        written = await self._write_finished()
        started = 0
        if len(self._in_flight) <= self.concurrency // 2:  # claim in groups, not one by one
            started = await self._start_due(self.concurrency - len(self._in_flight))
        if self._in_flight:
            # A slot freed, or a while for deliveries that come due meanwhile.
            await asyncio.wait(
                self._in_flight, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
            )
            return written + started + 1
        return written + started

    async def _start_due(self, free: int) -> int:
        now = time.time()
        due = await asyncio.to_thread(self.store.claim_due, now, free)
        if not due:
            return 0
        # Read each claim's endpoints afresh: one removed stops getting deliveries at once.
        ids = {delivery.endpoint_id for delivery in due}
        endpoints = await asyncio.to_thread(lambda: {i: self.store.endpoint(i) for i in ids})
        tried, held = self._tried_and_held(due, now)
        for until, held_ids in held.items():
            await asyncio.to_thread(self.store.postpone, held_ids, until)
        for delivery in tried:
            task = asyncio.create_task(self._attempt(delivery, endpoints[delivery.endpoint_id]))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(tried)

    def _tried_and_held(
        self, due: list[Delivery], now: float
    ) -> tuple[list[Delivery], dict[float, list[str]]]:
        """What to send now, and what waits for its paused (or suspect) receiver."""
        tried: list[Delivery] = []
        held: dict[float, list[str]] = {}
        for delivery in due:
            endpoint_id = delivery.endpoint_id
            until = self.pauses.held_until(endpoint_id, now)
            if until is None and endpoint_id in self._probing:
                until = now + self.pauses.base_s  # after the probe's answer
            if until is not None:
                held.setdefault(until, []).append(delivery.id)
                continue
            if self.pauses.suspect(endpoint_id):
                self._probing.add(endpoint_id)
            tried.append(delivery)
        return tried, held

    async def _attempt(self, delivery: Delivery, endpoint: Endpoint | None) -> None:
        """Never raises: its outcome goes to ``_finished``, written with its group's."""
        try:
            if endpoint is None:
                self._finish(delivery, DeliveryState.FAILED, "the endpoint was removed")
                return
            try:
                refusal = await self._post(endpoint, delivery)
            except UrlRefused as error:  # its host now resolves inward: never sent there
                self._finish(delivery, DeliveryState.FAILED, f"refused: {error}")
                return
            if refusal is None:
                self.pauses.succeeded(endpoint.id)
                self._finish(delivery, DeliveryState.DELIVERED, None)
            else:
                self.pauses.failed(endpoint.id, time.time())
                self._failed(delivery, refusal)
        except Exception as error:  # a bug here must not lose the claim's outcome silently
            log.exception("webhook %s attempt failed", delivery.id)
            self._failed(delivery, f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS])
        finally:
            if endpoint is not None:
                self._probing.discard(endpoint.id)

    async def _post(self, endpoint: Endpoint, delivery: Delivery) -> str | None:
        """None when the receiver took it (any 2xx); else why not."""
        body = delivery.body.encode()
        headers = signed_headers(endpoint.secret, delivery.event_id, time.time(), body)
        try:
            status = await self._http.post(endpoint.url, body, headers)
        except PostFailed as error:
            return str(error)[:MAX_ERROR_CHARS]
        if 200 <= status < 300:
            return None
        if status in (301, 302, 303, 307, 308):
            return f"HTTP {status}: redirects are not followed"
        return f"HTTP {status}"

    def _failed(self, delivery: Delivery, error: str) -> None:
        now = time.time()
        delay = min(MAX_BACKOFF_S, self.retry_base_s * 2.0 ** min(delivery.attempts, 20))
        if now + delay - delivery.created_at > self.max_age_s:
            log.warning("webhook %s failed for good: %s", delivery.id, error)
            self._finish(delivery, DeliveryState.FAILED, error)
            return
        self._finished.append(Settlement(delivery.id, DeliveryState.PENDING, now + delay, error))

    def _finish(self, delivery: Delivery, state: DeliveryState, error: str | None) -> None:
        self._finished.append(Settlement(delivery.id, state, time.time(), error))

    async def _write_finished(self) -> int:
        """One store call for every attempt finished since the last; kept on failure (the
        store down for a moment), written at the next step."""
        if not self._finished:
            return 0
        group = self._finished
        self._finished = []
        try:
            await asyncio.to_thread(self.store.settle_many, group)
        except BaseException:
            self._finished = group + self._finished
            raise
        return len(group)

    async def aclose(self) -> None:
        """Let the requests in flight finish (each within its timeout), write them, close."""
        try:
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self.timeout_s + 1)
            for task in self._in_flight:
                task.cancel()  # claimed and unanswered: they come back after CLAIM_S
            try:
                await self._write_finished()
            except Exception:
                log.exception("webhook outcomes not written: those deliveries will be sent again")
        finally:
            await self._http.aclose()
