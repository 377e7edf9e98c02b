"""The HTTP intake API, built by :func:`create_app` (no module-level state)."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emailq.api import problems, routes
from emailq.api.grouping import EnqueueGroup
from emailq.api.readiness import READY_TIMEOUT, BoundedCheck, provider_probe
from emailq.broker import Broker, open_broker
from emailq.keys import KeyStore, open_key_store
from emailq.metrics import IntakeMetrics
from emailq.ratelimit import Limiter

MAX_BODY_BYTES = 16 * 1024 * 1024  # a 10 MB email as JSON with base64 attachments


@dataclass(frozen=True, slots=True)
class ApiSettings:
    broker_url: str
    provider_url: str | None = None  # checked by /health/ready when given
    max_body_bytes: int = MAX_BODY_BYTES
    tenant_rate: float | None = None  # emails/s each tenant may submit; None: no limit
    tenant_burst: float = 5000.0
    ready_timeout: float = READY_TIMEOUT  # /health/ready answers within about this


@dataclass
class ApiContext:
    settings: ApiSettings
    broker: Broker
    keys: KeyStore
    metrics: IntakeMetrics
    limiter: Limiter | None
    broker_ready: BoundedCheck
    provider_ready: BoundedCheck
    group: EnqueueGroup


def create_app(
    settings: ApiSettings,
    broker: Broker | None = None,
    keys: KeyStore | None = None,
    limiter: Limiter | None = None,
) -> FastAPI:
    owned = broker is None  # then the app opens and closes it with its lifespan
    broker = broker or open_broker(settings.broker_url)
    if limiter is None and settings.tenant_rate:
        from emailq.supervisor import limiter_for

        limiter = limiter_for(settings.broker_url)
    context = ApiContext(
        settings=settings,
        broker=broker,
        keys=keys or open_key_store(settings.broker_url),
        metrics=IntakeMetrics(lambda: context.broker),
        limiter=limiter,
        broker_ready=BoundedCheck(lambda: context.broker.ping(), settings.ready_timeout),
        provider_ready=BoundedCheck(provider_probe(settings.provider_url), settings.ready_timeout),
        group=EnqueueGroup(broker),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned and context.broker is None:  # started again after a shutdown
            context.broker = open_broker(settings.broker_url)
            context.group = EnqueueGroup(context.broker)
        yield
        if owned and context.broker is not None:
            context.broker.close()
            context.broker = None  # type: ignore[assignment]

    app = FastAPI(
        title="emailq",
        version="0.1.0",
        summary="Queue outbound email in priority lanes",
        lifespan=lifespan,
    )
    app.state.context = context
    problems.install(app)
    routes.install(app, context)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise problems.Problem(413, f"request bodies are limited to {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request bodies are limited to {self.max_bytes} bytes"
        await problems.problem_response(413, detail)(scope, receive, send)


def app_from_env() -> Any:
    """For ``uvicorn --factory emailq.api.app:app_from_env``."""
    from emailq.config import Settings

    settings = Settings.from_env()
    rate = os.environ.get("EMAILQ_TENANT_RATE")
    app = create_app(
        ApiSettings(
            settings.broker_url,
            provider_url=os.environ.get("EMAILQ_PROVIDER_URL"),
            tenant_rate=float(rate) if rate else None,
        )
    )
    # Why: everything so far (modules, the app) lives as long as the process. Out of the
    # collector's generations, it is no longer rescanned on every full collection, which
    # cost about 9% of a 500-guest list's intake time (benchmarks/api.py).
    gc.freeze()
    return app
