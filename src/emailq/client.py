"""Python clients for the emailq HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Sends are retried on connection errors, 429 and 5xx answers. Each send carries an
``Idempotency-Key`` (the caller's, or a random one made once per call), so a retry after a
lost answer returns the first id instead of queueing the email twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from emailq.errors import EmailqError, FieldError
from emailq.message import Email

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(EmailqError):
    """The API refused a request; ``errors`` name the fields when it was invalid input."""

    def __init__(self, status: int, detail: str, errors: Sequence[FieldError] = ()) -> None:
        fields = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(f"{status} {detail}" + (f" ({fields})" if fields else ""))
        self.status = status
        self.detail = detail
        self.errors = list(errors)


@dataclass(frozen=True, slots=True)
class Queued:
    id: str
    lane: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.25  # doubles each time; a Retry-After answer is honoured

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted: str | None = response.headers.get("retry-after") if response else None
        if hinted and hinted.isdigit():
            return float(hinted)
        return float(self.backoff_s * 2.0**attempt)


def email_body(email: Email | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(email, Email):
        return dict(email.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    return dict(email)


def raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    errors = [FieldError(e.get("field", ""), e.get("message", "")) for e in body.get("errors", [])]
    raise ApiError(response.status_code, body.get("detail", response.reason_phrase), errors)


def _retryable(response: httpx.Response | None) -> bool:
    return response is None or response.status_code in RETRY_STATUSES


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "emailq-python"}


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 == self.retry.attempts:
                    raise
            if response is not None and not _retryable(response):
                break
            if attempt + 1 < self.retry.attempts:
                time.sleep(self.retry.delay(attempt, response))
        assert response is not None
        raise_for_problem(response)
        return response

    def send(self, email: Email | Mapping[str, Any], idempotency_key: str | None = None) -> Queued:
        key = idempotency_key or f"emailq-client/{uuid.uuid4()}"
        body = self._request("POST", "/v1/emails", json=email_body(email),
                             headers={"Idempotency-Key": key}).json()  # fmt: skip
        return Queued(body["id"], body["lane"])

    def send_batch(
        self, template: Mapping[str, Any], recipients: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        body = {"template": dict(template), "recipients": [dict(r) for r in recipients]}
        return list(self._request("POST", "/v1/emails/batch", json=body).json()["ids"])

    def get(self, message_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/emails/{message_id}").json())

    def cancel(self, message_id: str) -> bool:
        try:
            self._request("DELETE", f"/v1/emails/{message_id}")
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def queues(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v1/queues").json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 == self.retry.attempts:
                    raise
            if response is not None and not _retryable(response):
                break
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.delay(attempt, response))
        assert response is not None
        raise_for_problem(response)
        return response

    async def send(
        self, email: Email | Mapping[str, Any], idempotency_key: str | None = None
    ) -> Queued:
        key = idempotency_key or f"emailq-client/{uuid.uuid4()}"
        response = await self._request("POST", "/v1/emails", json=email_body(email),
                                       headers={"Idempotency-Key": key})  # fmt: skip
        body = response.json()
        return Queued(body["id"], body["lane"])

    async def send_batch(
        self, template: Mapping[str, Any], recipients: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        body = {"template": dict(template), "recipients": [dict(r) for r in recipients]}
        return list((await self._request("POST", "/v1/emails/batch", json=body)).json()["ids"])

    async def get(self, message_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/v1/emails/{message_id}")).json())

    async def cancel(self, message_id: str) -> bool:
        try:
            await self._request("DELETE", f"/v1/emails/{message_id}")
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def queues(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/v1/queues")).json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
