"""The intake peer for benchmarks/api.py: the HTTP endpoints an application writes in front
of Celery + a mail task, served like `emailq serve` (uvicorn, one process, uvloop, httptools).

    uvicorn peers.celery_intake:app        (from benchmarks/; needs the bench extra)

- ``POST /v1/emails``: one email as JSON; its addresses checked with email-validator, then
  one ``apply_async``.
- ``POST /v1/emails/batch``: the body emailq's guest-list endpoint takes. Subject, text and
  html rendered with Jinja2's sandbox (HTML autoescaped) for each guest, every address
  checked, then one ``apply_async`` per guest on one producer. Nothing is queued when a
  guest fails (the list is checked whole first), as emailq does.

What it leaves out, and emailq does: typed field-by-field validation with sizes and header
injection checks, lanes from the wedding context, idempotency keys, API keys. So it does
less work per email than emailq; its figures are a floor for what Celery users pay.
Endpoints are ``def``: Celery's producer blocks, so FastAPI runs them on its thread pool.
"""

from __future__ import annotations

import json
from typing import Any

from email_validator import EmailNotValidError, validate_email
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from jinja2.sandbox import SandboxedEnvironment
from starlette.concurrency import run_in_threadpool

from peers.celery_app import app as celery_app
from peers.celery_app import send_invitation

app = FastAPI()
_TEXT = SandboxedEnvironment(autoescape=False)
_HTML = SandboxedEnvironment(autoescape=True)


def _checked(address: str) -> str:
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise HTTPException(422, f"invalid address: {error}") from None


@app.post("/v1/emails", status_code=202)
def send_email(body: dict[str, Any]) -> dict[str, Any]:
    body["to"] = _checked(body["to"])
    body["from"] = _checked(body["from"])
    result = send_invitation.apply_async((body,))
    return {"id": result.id}


@app.post("/v1/emails/batch", status_code=202)
async def send_batch(request: Request) -> JSONResponse:
    data = json.loads(await request.body())  # read in the loop, queue on the thread pool
    ids = await run_in_threadpool(_queue_batch, data)
    return JSONResponse({"ids": ids, "count": len(ids)}, status_code=202)


def _queue_batch(data: dict[str, Any]) -> list[str]:
    template = data["template"]
    sender = _checked(template["from"])
    compiled = {
        field: (_HTML if field == "html" else _TEXT).from_string(template[field])
        for field in ("subject", "text", "html")
        if field in template
    }
    emails = []
    for guest in data["recipients"]:
        fields = {name: t.render(guest["variables"]) for name, t in compiled.items()}
        emails.append(fields | {"from": sender, "to": _checked(guest["to"])})
    with celery_app.producer_or_acquire() as producer:
        return [send_invitation.apply_async((e,), producer=producer).id for e in emails]
