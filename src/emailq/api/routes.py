"""The API's routes. Handlers parse with the email model (one set of rules for every
intake), place mail with the policy, and call the broker on a worker thread."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from emailq.api import auth
from emailq.api.batch import BatchRequest, parse_batch
from emailq.api.nesting import body_nested_deeper, too_deep_error
from emailq.api.problems import MEDIA_TYPE, TITLES, Problem
from emailq.api.senders import check_from_domains
from emailq.batches.registry import BatchRecord, new_batch_id
from emailq.broker import MessageInfo, NewMessage, State
from emailq.errors import FieldError, InvalidEmail, ValidationError
from emailq.keys import ApiKey
from emailq.message import Email, parse_email

if TYPE_CHECKING:
    from emailq.api.app import ApiContext


def problems_of(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Each status a route may answer besides its success, as a problem document (documented,
    so that a client or schemathesis finds no status the spec does not name)."""
    schema = {"type": "object", "properties": {"title": {"type": "string"},
              "status": {"type": "integer"}, "detail": {"type": "string"}}}  # fmt: skip
    return {
        status: {"description": TITLES[status], "content": {MEDIA_TYPE: {"schema": schema}}}
        for status in statuses
    }


# Every route can answer 413 (the body cap) and 503 (the queue down or full); /v1 ones 401.
_ANY = (413, 503)
V1_PROBLEMS = (401, *_ANY)  # what any authenticated /v1 route may answer
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Queued"},
    **problems_of(*V1_PROBLEMS, 403, 422, 429),
}


def _json_object(body: bytes, where: str = "") -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidEmail([too_deep_error(where)]) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidEmail([FieldError(where, "the body is not valid JSON")]) from None
    if not isinstance(data, dict):
        raise InvalidEmail([FieldError(where, "expected a JSON object")])
    if body_nested_deeper(body, data):
        raise InvalidEmail([too_deep_error(where)])
    return data


def scope_to_key(data: dict[str, Any], key: ApiKey, idempotency_key: str | None) -> None:
    """Bind the fields the API key decides: the tenant, whether a priority may be set."""
    if data.get("tenant", key.tenant) != key.tenant:
        raise Problem(403, "this API key may only send for its own tenant")
    data["tenant"] = key.tenant
    if data.get("priority") is not None and not key.trusted:
        raise Problem(403, "only trusted API keys may set an explicit priority")
    if idempotency_key is not None:
        if data.get("idempotency_key", idempotency_key) != idempotency_key:
            raise InvalidEmail([FieldError("idempotency_key", "differs from the header's")])
        data["idempotency_key"] = idempotency_key


def info_body(info: MessageInfo) -> dict[str, Any]:
    return {
        "id": info.id, "state": info.state.value, "lane": info.lane.value,
        "attempts": info.attempts, "max_attempts": info.max_attempts,
        "last_error": info.last_error, "enqueued_at": _iso(info.enqueued_at),
        "updated_at": _iso(info.updated_at), "available_at": _iso(info.available_at),
    }  # fmt: skip


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def install(app: FastAPI, ctx: ApiContext) -> None:  # noqa: C901 - one closure per route
    async def caller(request: Request) -> ApiKey:
        return await auth.authenticate(request, ctx.deployment.keys)

    async def enqueue(
        key: ApiKey, emails: list[Email], from_field: str, batch_id: str | None = None
    ) -> list[tuple[str, NewMessage]]:
        check_from_domains(emails, key.tenant, ctx.settings.from_domains, from_field)
        await ctx.budget.spend(key.tenant, len(emails))
        now = datetime.now(UTC)
        messages = [ctx.deployment.to_message(email, now, key.key_id) for email in emails]
        if batch_id is not None:
            messages = [replace(message, batch_id=batch_id) for message in messages]
        ids = await ctx.group.enqueue(messages)
        for lane, count in Counter(message.lane.value for message in messages).items():
            ctx.metrics.accepted.labels(lane).inc(count)
        return list(zip(ids, messages, strict=True))

    @app.post("/v1/emails", status_code=202, responses=ACCEPTED,
              openapi_extra=_body_schema("Email"))  # fmt: skip
    async def send_email(request: Request) -> JSONResponse:
        """Queue one email. 202 once the broker holds it; repeats of an Idempotency-Key
        return the first email's id."""
        started = time.perf_counter()
        key = await caller(request)
        ctx.budget.refuse_if_flooding(key.tenant)  # before the body is read or parsed
        data = _json_object(await request.body())
        scope_to_key(data, key, request.headers.get("idempotency-key"))
        [(message_id, message)] = await enqueue(key, [parse_email(data)], "from")
        ctx.metrics.request_seconds.labels("send").observe(time.perf_counter() - started)
        return JSONResponse(
            {"id": message_id, "lane": message.lane.value},
            status_code=202,
            headers={"Location": f"/v1/emails/{message_id}"},
        )

    @app.post("/v1/emails/batch", status_code=202, responses=ACCEPTED,
              openapi_extra=_body_schema("BatchRequest"))  # fmt: skip
    async def send_batch(request: Request) -> JSONResponse:
        """Queue a guest list: one template, up to 1,000 recipients with their variables;
        accepted whole or rejected whole with every error's index and field."""
        started = time.perf_counter()
        key = await caller(request)
        ctx.budget.refuse_if_flooding(key.tenant)
        body = await request.body()
        idempotency_key = request.headers.get("idempotency-key")
        emails = await run_in_threadpool(
            parse_batch, body, lambda template: scope_to_key(template, key, None),
            idempotency_key,
        )  # fmt: skip
        batch_id = new_batch_id(key.tenant, idempotency_key)
        queued = await enqueue(key, emails, "template.from", batch_id)
        wedding = emails[0].wedding
        record = BatchRecord(
            id=batch_id, tenant=key.tenant, wedding_id=wedding.wedding_id if wedding else None,
            created_at=time.time(), count=len(queued),
        )  # fmt: skip
        await run_in_threadpool(ctx.deployment.batches.record, record)
        ctx.metrics.request_seconds.labels("batch").observe(time.perf_counter() - started)
        return JSONResponse(
            {"batch_id": batch_id, "ids": [message_id for message_id, _ in queued],
             "count": len(queued)},
            status_code=202, headers={"Location": f"/v1/batches/{batch_id}"},
        )  # fmt: skip

    async def owned_info(request: Request, message_id: str) -> MessageInfo:
        key = await caller(request)
        info: MessageInfo | None = await run_in_threadpool(ctx.deployment.broker.get, message_id)
        if info is None or info.tenant != key.tenant:
            raise Problem(404, f"no email {message_id!r} for this tenant")
        return info

    @app.get("/v1/emails/{message_id}", responses=problems_of(*V1_PROBLEMS, 404))
    async def get_email(request: Request, message_id: str) -> JSONResponse:
        """An email's state, lane, attempts, last error and timestamps."""
        return JSONResponse(info_body(await owned_info(request, message_id)))

    @app.delete("/v1/emails/{message_id}", responses=problems_of(*V1_PROBLEMS, 404, 409))
    async def cancel_email(request: Request, message_id: str) -> JSONResponse:
        """Cancel an email no worker has taken yet; 409 when it is being sent or done."""
        info = await owned_info(request, message_id)
        if not await run_in_threadpool(ctx.deployment.broker.cancel, message_id):
            current = await run_in_threadpool(ctx.deployment.broker.get, message_id)
            state = current.state.value if current else info.state.value
            raise Problem(409, f"the email is {state} and can no longer be cancelled")
        return JSONResponse({"id": message_id, "state": "cancelled"})

    @app.post("/v1/emails/{message_id}/requeue", responses=problems_of(*V1_PROBLEMS, 404, 409))
    async def requeue_email(request: Request, message_id: str) -> JSONResponse:
        """Queue a dead email again, with fresh attempts and a fresh expiry; 409 unless dead."""
        info = await owned_info(request, message_id)
        requeued = 0
        if info.state is State.DEAD:
            requeued = await run_in_threadpool(ctx.deployment.broker.requeue_dead, [message_id])
        if not requeued:
            current = await run_in_threadpool(ctx.deployment.broker.get, message_id)
            state = current.state.value if current else info.state.value
            raise Problem(409, f"the email is {state}; only dead emails can be requeued")
        return JSONResponse({"id": message_id, "state": "queued"})

    @app.get("/v1/emails/{message_id}/events", responses=problems_of(*V1_PROBLEMS, 404))
    async def email_events(request: Request, message_id: str) -> JSONResponse:
        """The email's audit trail, oldest first: accepted, leased, each attempt, sent…
        Recipients appear only as keyed hashes."""
        info = await owned_info(request, message_id)
        events = await run_in_threadpool(ctx.deployment.broker.events, info.id)
        return JSONResponse({"id": info.id, "events": [json.loads(e.to_json()) for e in events]})

    @app.get(
        "/v1/events", response_class=PlainTextResponse, responses=problems_of(*V1_PROBLEMS, 422)
    )
    async def tenant_events(request: Request, since: float, until: float) -> Response:
        """The caller's tenant's audit events from ``since`` to before ``until`` (epoch
        seconds), as JSON lines."""
        key = await caller(request)
        events = await run_in_threadpool(
            ctx.deployment.broker.tenant_events, key.tenant, since, until
        )
        lines = "".join(e.to_json() + "\n" for e in events)
        return Response(lines, media_type="application/x-ndjson")

    @app.post("/v1/erasure", responses=problems_of(*V1_PROBLEMS, 403, 422),
              openapi_extra=_body_schema("ErasureRequest"))  # fmt: skip
    async def erasure(request: Request) -> JSONResponse:
        """Erase an address (GDPR art. 17) from the caller's tenant's mail: queued mail to
        it is cancelled; bodies, recipients and idempotency keys naming it are removed; the
        audit trail keeps a keyed hash. An operator key may name any tenant, or none (all).
        Running it again changes nothing; the counts say what was done."""
        key = await caller(request)
        data = _json_object(await request.body())
        address = data.get("recipient")
        if not isinstance(address, str):
            raise InvalidEmail([FieldError("recipient", "an email address is required")])
        tenant = data.get("tenant", None if key.operator else key.tenant)
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidEmail([FieldError("tenant", "must be a string")])
        if tenant != key.tenant and not key.operator:
            raise Problem(403, "only an operator key may erase across tenants")
        try:
            counts = await run_in_threadpool(ctx.deployment.erase, address, tenant)
        except ValidationError as error:
            raise InvalidEmail([FieldError(error.field, error.message)]) from None
        return JSONResponse({"tenant": tenant, **counts.as_dict()})

    @app.get("/v1/queues", responses=problems_of(*V1_PROBLEMS))
    async def queues(request: Request) -> JSONResponse:
        """The caller's tenant's depth per lane and state, and the age of its oldest ready
        message in each lane (an operator key's: every tenant's)."""
        key = await caller(request)
        tenant = None if key.operator else key.tenant
        stats = await run_in_threadpool(ctx.deployment.broker.stats, tenant)
        return JSONResponse({
            lane.value: {
                "depth": {state.value: n for state, n in lane_stats.counts.items()},
                "oldest_age_s": round(lane_stats.oldest_age, 3),
            }
            for lane, lane_stats in stats.lanes.items()
        })  # fmt: skip

    @app.get("/v1/providers", responses=problems_of(*V1_PROBLEMS, 403))
    async def providers(request: Request) -> JSONResponse:
        """The provider chain, primary first: each provider's state (active, standby, down,
        recovering), last health check, failed checks in a row. Operator keys only."""
        key = await caller(request)
        if not key.operator:
            raise Problem(403, "/v1/providers needs an operator API key")
        rows = await run_in_threadpool(ctx.deployment.providers)
        return JSONResponse({"providers": [asdict(row) for row in rows]})

    @app.get("/health", responses=problems_of(*_ANY))
    async def health() -> JSONResponse:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready", responses=problems_of(*_ANY))
    async def ready() -> JSONResponse:
        """Readiness: the broker can take mail (reachable, not full) and, when configured,
        the provider answers; 503 naming what is wrong otherwise."""
        broker, provider = await asyncio.gather(ctx.broker_ready(), ctx.provider_ready())
        ok = broker is None and provider is None
        body: dict[str, Any] = {
            "status": "ready" if ok else "not ready",
            "broker": broker is None,
            "provider": provider is None,
        }
        if broker is not None:
            body["broker_problem"] = broker
        if provider is not None:
            body["provider_problem"] = provider
        headers = None if ok else {"Retry-After": "5"}
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses=problems_of(*V1_PROBLEMS, 403))  # fmt: skip
    async def metrics(request: Request) -> Response:
        """Prometheus text format; off loopback (or with api.metrics_access = "operator"),
        for operator keys only."""
        if ctx.settings.metrics_need_key:
            key = await caller(request)
            if not key.operator:
                raise Problem(403, "/metrics needs an operator API key")
        data = await run_in_threadpool(generate_latest, ctx.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _body_schema(model: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated spec, plus the email model's schemas that the raw-body routes use."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    schemas["ErasureRequest"] = {
        "type": "object",
        "required": ["recipient"],
        "properties": {"recipient": {"type": "string", "format": "email"},
                       "tenant": {"type": "string"}},
    }  # fmt: skip
    for model in (Email, BatchRequest):
        schema = model.model_json_schema(by_alias=True, ref_template=template)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    app.openapi_schema = spec
    return spec
