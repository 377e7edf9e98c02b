"""The webhook routes: a tenant registers receivers for its events and sees how each
delivery went. An endpoint's secret is shown once, in the answer that creates it."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from emailq.api import auth
from emailq.api.problems import Problem
from emailq.api.routes import problems_of
from emailq.errors import FieldError, InvalidEmail
from emailq.ids import new_id
from emailq.keys import ApiKey
from emailq.webhooks.probe import check_receiver
from emailq.webhooks.signing import new_secret
from emailq.webhooks.ssrf import UrlRefused
from emailq.webhooks.store import EVENT_TYPES, DeliveryState, Endpoint

if TYPE_CHECKING:
    from emailq.api.app import ApiContext

_V1 = (401, 413, 503)
MAX_URL_CHARS = 2000


def install(app: FastAPI, ctx: ApiContext) -> None:
    async def owned(request: Request, endpoint_id: str) -> tuple[ApiKey, Endpoint]:
        key = await auth.authenticate(request, ctx.deployment.keys)
        endpoint = await run_in_threadpool(ctx.deployment.webhooks.endpoint, endpoint_id)
        if endpoint is None or endpoint.tenant != key.tenant:
            raise Problem(404, f"no webhook {endpoint_id!r} for this tenant")
        return key, endpoint

    @app.post("/v1/webhooks", status_code=201, responses=problems_of(*_V1, 422))
    async def create_webhook(request: Request) -> JSONResponse:
        """Register a receiver: ``{"url", "events": [...]}``. The answer holds its signing
        secret (``whsec_…``), shown this once."""
        key = await auth.authenticate(request, ctx.deployment.keys)
        url, events = _parse(await request.body())
        allow = ctx.deployment.settings.webhooks.allow_private_urls
        try:
            await check_receiver(url, allow)
        except UrlRefused as error:
            raise InvalidEmail([FieldError("url", str(error))]) from None
        endpoint = Endpoint(id=f"wh_{new_id()}", tenant=key.tenant, url=url, events=events,
                            secret=new_secret(), created_at=time.time())  # fmt: skip
        await run_in_threadpool(ctx.deployment.webhooks.add_endpoint, endpoint)
        return JSONResponse({**endpoint.public(), "secret": endpoint.secret}, status_code=201)

    @app.get("/v1/webhooks", responses=problems_of(*_V1))
    async def list_webhooks(request: Request) -> JSONResponse:
        """The caller's tenant's receivers (without their secrets)."""
        key = await auth.authenticate(request, ctx.deployment.keys)
        found = await run_in_threadpool(ctx.deployment.webhooks.endpoints, key.tenant)
        return JSONResponse({"webhooks": [endpoint.public() for endpoint in found]})

    @app.delete("/v1/webhooks/{endpoint_id}", responses=problems_of(*_V1, 404))
    async def delete_webhook(request: Request, endpoint_id: str) -> JSONResponse:
        """Stop sending to a receiver; deliveries not yet made are failed."""
        await owned(request, endpoint_id)
        await run_in_threadpool(ctx.deployment.webhooks.remove_endpoint, endpoint_id)
        return JSONResponse({"id": endpoint_id, "removed": True})

    @app.get("/v1/webhooks/{endpoint_id}/deliveries", responses=problems_of(*_V1, 404, 422))
    async def webhook_deliveries(
        request: Request, endpoint_id: str, state: str | None = None, limit: int = 100
    ) -> JSONResponse:
        """The receiver's deliveries, newest first: pending, delivered or failed (after a day
        of retries), with attempts and the last error."""
        chosen = _state(state)
        if not 1 <= limit <= 1000:
            raise InvalidEmail([FieldError("limit", "must be 1 to 1000")])
        await owned(request, endpoint_id)
        found = await run_in_threadpool(
            ctx.deployment.webhooks.deliveries, endpoint_id, chosen, limit
        )
        return JSONResponse({"id": endpoint_id, "deliveries": [d.public() for d in found]})


def _parse(body: bytes) -> tuple[str, tuple[str, ...]]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise InvalidEmail([FieldError("", "the body is not valid JSON")]) from None
    if not isinstance(data, dict):
        raise InvalidEmail([FieldError("", "expected a JSON object")])
    errors = [FieldError(name, "unknown field") for name in data if name not in ("url", "events")]
    url, events = data.get("url"), data.get("events")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_CHARS:
        errors.append(FieldError("url", f"an http(s) URL of at most {MAX_URL_CHARS} characters"))
    if not isinstance(events, list) or not events:
        errors.append(FieldError("events", f"a non-empty list of: {', '.join(EVENT_TYPES)}"))
    else:
        errors += [
            FieldError(f"events.{i}", f"unknown event type; one of {', '.join(EVENT_TYPES)}")
            for i, kind in enumerate(events) if kind not in EVENT_TYPES
        ]  # fmt: skip
    if errors:
        raise InvalidEmail(errors)
    assert isinstance(url, str) and isinstance(events, list)
    return url, tuple(dict.fromkeys(events))


def _state(state: str | None) -> DeliveryState | None:
    if state is None:
        return None
    try:
        return DeliveryState(state)
    except ValueError:
        names = ", ".join(s.value for s in DeliveryState)
        raise InvalidEmail([FieldError("state", f"must be one of {names}")]) from None
