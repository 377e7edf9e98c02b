"""The batch routes: a guest list's status, cancelling and retrying it, a tenant's batches.

Every route is the caller's tenant's: another tenant's batch id answers 404, as an unknown
one does, so ids do not leak.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from emailq.api import auth
from emailq.api.problems import Problem
from emailq.api.routes import problems_of
from emailq.batches.actions import cancel, retry_dead
from emailq.batches.registry import LIST_LIMIT, BatchRecord
from emailq.batches.status import MAX_PAGE_LIMIT, PAGE_LIMIT, BatchView
from emailq.broker import NewMessage, State
from emailq.errors import FieldError, InvalidEmail
from emailq.message import Email

if TYPE_CHECKING:
    from emailq.api.app import ApiContext

_V1 = (401, 413, 503)


def install(app: FastAPI, ctx: ApiContext) -> None:  # noqa: C901 - one closure per route
    async def owned(request: Request, batch_id: str) -> tuple[str, BatchView, BatchRecord | None]:
        key = await auth.authenticate(request, ctx.deployment.keys)
        record = await run_in_threadpool(ctx.deployment.batches.get, batch_id)
        members = await run_in_threadpool(ctx.deployment.broker.batch_members, batch_id)
        # The record says whose it is; without one (purged), its messages do.
        tenant = record.tenant if record else (members[0].info.tenant if members else None)
        if tenant != key.tenant or not (record or members):
            raise Problem(404, f"no batch {batch_id!r} for this tenant")
        return key.key_id, BatchView.of(members), record

    @app.get("/v1/batches/{batch_id}", responses=problems_of(*_V1, 404, 422))
    async def get_batch(
        request: Request,
        batch_id: str,
        state: str | None = None,
        limit: int = PAGE_LIMIT,
        after: str | None = None,
    ) -> JSONResponse:
        """Counts per state and lane, first and last delivery, and a page of recipients
        (``state`` filters it; ``after`` is the previous page's ``next``)."""
        chosen = _state(state)
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidEmail([FieldError("limit", f"must be 1 to {MAX_PAGE_LIMIT}")])
        _, view, record = await owned(request, batch_id)
        recipients, cursor = view.page(chosen, after, limit)
        return JSONResponse({
            "batch_id": batch_id, **_record_fields(record), **view.summary(),
            "recipients": recipients, "next": cursor,
        })  # fmt: skip

    @app.delete("/v1/batches/{batch_id}", responses=problems_of(*_V1, 404))
    async def cancel_batch(request: Request, batch_id: str) -> JSONResponse:
        """Cancel every message of the batch no worker has taken yet."""
        _, view, _ = await owned(request, batch_id)
        done = await run_in_threadpool(cancel, ctx.deployment.broker, view)
        return JSONResponse({
            "batch_id": batch_id, "cancelled": len(done.cancelled),
            "not_cancelled": done.not_cancelled,
        })  # fmt: skip

    @app.post("/v1/batches/{batch_id}/retry", status_code=202,
              responses=problems_of(*_V1, 404, 409))  # fmt: skip
    async def retry_batch(request: Request, batch_id: str) -> JSONResponse:
        """One new message for each dead recipient, in the same batch; 409 when none is dead."""
        key_id, view, _ = await owned(request, batch_id)
        if not view.dead():
            raise Problem(409, "nothing in this batch is dead: there is nothing to retry")

        def to_message(email: Email) -> NewMessage:
            return ctx.deployment.to_message(email, _now(), key_id)

        retried = await run_in_threadpool(
            retry_dead, ctx.deployment.broker, batch_id, view, to_message
        )
        if not retried.ids:
            raise Problem(409, "the dead recipients' bodies are no longer held: cannot retry")
        return JSONResponse(
            {"batch_id": batch_id, "count": len(retried.ids), "ids": retried.ids,
             "without_body": retried.without_body},
            status_code=202,
        )  # fmt: skip

    @app.get("/v1/batches", responses=problems_of(*_V1, 422))
    async def list_batches(
        request: Request, wedding_id: str | None = None, limit: int = LIST_LIMIT
    ) -> JSONResponse:
        """The caller's tenant's batches, newest first; those of one wedding when given."""
        if not 1 <= limit <= LIST_LIMIT:
            raise InvalidEmail([FieldError("limit", f"must be 1 to {LIST_LIMIT}")])
        key = await auth.authenticate(request, ctx.deployment.keys)
        found = await run_in_threadpool(ctx.deployment.batches.list, key.tenant, wedding_id, limit)
        return JSONResponse({"batches": [{"batch_id": r.id, **_record_fields(r)} for r in found]})


def _state(state: str | None) -> State | None:
    if state is None:
        return None
    try:
        return State(state)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise InvalidEmail([FieldError("state", f"must be one of {names}")]) from None


def _record_fields(record: BatchRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {"wedding_id": record.wedding_id, "created_at": record.created_at,
            "accepted": record.count}  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)
