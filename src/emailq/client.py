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
from emailq.intake import Queued
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


def _pause_before_retry(
    policy: RetryPolicy, attempt: int, response: httpx.Response | None
) -> float | None:
    """Seconds to wait before trying again, or None to stop with this response."""
    if not _retryable(response) or attempt + 1 >= policy.attempts:
        return None
    return policy.delay(attempt, response)


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "emailq-python"}


# What each call sends; the sync and async clients differ only in how they wait.
def _send_call(email: Email | Mapping[str, Any], key: str | None) -> tuple[str, str, Any]:
    headers = {"Idempotency-Key": key or f"emailq-client/{uuid.uuid4()}"}
    return "POST", "/v1/emails", {"json": email_body(email), "headers": headers}


def _batch_call(
    template: Mapping[str, Any],
    recipients: Sequence[Mapping[str, Any]],
    key: str | None = None,
) -> tuple[str, str, Any]:
    body = {"template": dict(template), "recipients": [dict(r) for r in recipients]}
    # A key on every batch: a retry after a lost answer returns the same batch and ids.
    headers = {"Idempotency-Key": key or f"emailq-client/{uuid.uuid4()}"}
    return "POST", "/v1/emails/batch", {"json": body, "headers": headers}


@dataclass(frozen=True, slots=True)
class BatchQueued:
    """An accepted guest list: its batch id (``GET /v1/batches/{id}``) and one id per guest."""

    batch_id: str
    ids: list[str]


def _batch_queued(response: httpx.Response) -> BatchQueued:
    body = response.json()
    return BatchQueued(body["batch_id"], list(body["ids"]))


def _batch_status_call(
    batch_id: str, state: str | None, limit: int, after: str | None
) -> tuple[str, str, Any]:
    params: dict[str, str | int] = {"limit": limit}
    if state is not None:
        params["state"] = state
    if after is not None:
        params["after"] = after
    return "GET", f"/v1/batches/{batch_id}", {"params": params}


def _batches_call(wedding_id: str | None) -> tuple[str, str, Any]:
    params = {} if wedding_id is None else {"wedding_id": wedding_id}
    return "GET", "/v1/batches", {"params": params}


def _queued(response: httpx.Response) -> Queued:
    body = response.json()
    return Queued(body["id"], body["lane"])


def _cancelled(error: ApiError | None) -> bool:
    if error is None:
        return True
    if error.status == 409:  # already being sent, or done
        return False
    raise error


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
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 >= self.retry.attempts:
                    raise
            pause = _pause_before_retry(self.retry, attempt, response)
            if pause is None and response is not None:
                raise_for_problem(response)
                return response
            time.sleep(pause or 0.0)
            attempt += 1

    def send(self, email: Email | Mapping[str, Any], idempotency_key: str | None = None) -> Queued:
        method, path, kwargs = _send_call(email, idempotency_key)
        return _queued(self._request(method, path, **kwargs))

    def send_batch(
        self, template: Mapping[str, Any], recipients: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        method, path, kwargs = _batch_call(template, recipients)
        return list(self._request(method, path, **kwargs).json()["ids"])

    def send_guest_list(
        self,
        template: Mapping[str, Any],
        recipients: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
    ) -> BatchQueued:
        """Like :meth:`send_batch`, answering with the batch id as well."""
        method, path, kwargs = _batch_call(template, recipients, idempotency_key)
        return _batch_queued(self._request(method, path, **kwargs))

    def batch(
        self, batch_id: str, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> dict[str, Any]:
        """A batch's counts per state and lane, and a page of its recipients."""
        method, path, kwargs = _batch_status_call(batch_id, state, limit, after)
        return dict(self._request(method, path, **kwargs).json())

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/batches/{batch_id}").json())

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        """One new message per dead recipient; ApiError 409 when none is dead."""
        return dict(self._request("POST", f"/v1/batches/{batch_id}/retry").json())

    def batches(self, wedding_id: str | None = None) -> list[dict[str, Any]]:
        method, path, kwargs = _batches_call(wedding_id)
        return list(self._request(method, path, **kwargs).json()["batches"])

    def get(self, message_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/emails/{message_id}").json())

    def cancel(self, message_id: str) -> bool:
        try:
            self._request("DELETE", f"/v1/emails/{message_id}")
        except ApiError as error:
            return _cancelled(error)
        return _cancelled(None)

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
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 >= self.retry.attempts:
                    raise
            pause = _pause_before_retry(self.retry, attempt, response)
            if pause is None and response is not None:
                raise_for_problem(response)
                return response
            await asyncio.sleep(pause or 0.0)
            attempt += 1

    async def send(
        self, email: Email | Mapping[str, Any], idempotency_key: str | None = None
    ) -> Queued:
        method, path, kwargs = _send_call(email, idempotency_key)
        return _queued(await self._request(method, path, **kwargs))

    async def send_batch(
        self, template: Mapping[str, Any], recipients: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        method, path, kwargs = _batch_call(template, recipients)
        return list((await self._request(method, path, **kwargs)).json()["ids"])

    async def send_guest_list(
        self,
        template: Mapping[str, Any],
        recipients: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
    ) -> BatchQueued:
        method, path, kwargs = _batch_call(template, recipients, idempotency_key)
        return _batch_queued(await self._request(method, path, **kwargs))

    async def batch(
        self, batch_id: str, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> dict[str, Any]:
        method, path, kwargs = _batch_status_call(batch_id, state, limit, after)
        return dict((await self._request(method, path, **kwargs)).json())

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return dict((await self._request("DELETE", f"/v1/batches/{batch_id}")).json())

    async def retry_batch(self, batch_id: str) -> dict[str, Any]:
        return dict((await self._request("POST", f"/v1/batches/{batch_id}/retry")).json())

    async def batches(self, wedding_id: str | None = None) -> list[dict[str, Any]]:
        method, path, kwargs = _batches_call(wedding_id)
        return list((await self._request(method, path, **kwargs)).json()["batches"])

    async def get(self, message_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/v1/emails/{message_id}")).json())

    async def cancel(self, message_id: str) -> bool:
        try:
            await self._request("DELETE", f"/v1/emails/{message_id}")
        except ApiError as error:
            return _cancelled(error)
        return _cancelled(None)

    async def queues(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/v1/queues")).json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
