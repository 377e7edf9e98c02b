"""The HTTP intake API, built by :func:`create_app` (no module-level state)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emailq.api import batch_routes, monitoring, problems, routes, webhook_routes
from emailq.api.auth import TenantBudget
from emailq.api.flood_gate import FloodGate
from emailq.api.grouping import EnqueueGroup
from emailq.api.readiness import BoundedCheck
from emailq.autoscale.controller import config_from_settings
from emailq.autoscale.metrics import DesiredWorkersCollector
from emailq.deployment import Deployment
from emailq.metrics import IntakeMetrics
from emailq.monitor.runner import MonitorThread
from emailq.probes import provider_reachable
from emailq.settings import ApiSection, Settings


@dataclass
class ApiContext:
    """What the routes use: the deployment (broker, keys, limiter, policy) and the API's own."""

    deployment: Deployment
    settings: ApiSection
    metrics: IntakeMetrics
    broker_ready: BoundedCheck
    provider_ready: BoundedCheck
    group: EnqueueGroup
    budget: TenantBudget


def create_app(deployment: Deployment | Settings) -> FastAPI:
    """The API for a deployment. Given :class:`Settings`, the app opens its own deployment
    when it starts and closes it when it stops (what ``emailq serve`` does); given a
    :class:`Deployment`, the caller keeps it and closes it."""
    owned = isinstance(deployment, Settings)
    opened = (
        deployment
        if isinstance(deployment, Deployment)
        else Deployment(deployment, patience_s=deployment.api.broker_patience_s)
    )
    api = opened.settings.api
    provider_url = opened.settings.provider.url
    context = ApiContext(
        deployment=opened,
        settings=api,
        metrics=IntakeMetrics(lambda: context.deployment.broker),
        broker_ready=BoundedCheck(lambda: context.deployment.broker.check(), api.ready_timeout_s),
        provider_ready=BoundedCheck(
            (lambda: None if provider_reachable(provider_url) else "unreachable")
            if api.check_provider
            else (lambda: None),
            api.ready_timeout_s,
        ),
        group=EnqueueGroup(opened.broker),
        budget=TenantBudget(lambda: context.deployment.limiter, api),
    )
    # The desired pool per queue, for orchestrators' autoscalers (deploy/kubernetes/).
    context.metrics.registry.register(
        DesiredWorkersCollector(
            lambda: context.deployment.broker, config_from_settings(opened.settings.autoscale)
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned and context.deployment is None:  # started again after a shutdown
            context.deployment = Deployment.from_settings(
                opened.settings, patience_s=api.broker_patience_s
            )
            context.group = EnqueueGroup(context.deployment.broker)
        # `emailq serve` runs the monitor too (its own deployment; the broker's lease
        # makes one writer of all the processes that run it).
        monitor = None
        if owned and opened.settings.monitor.enabled:
            monitor = MonitorThread(Deployment.from_settings(opened.settings)).start()
        yield
        if monitor is not None:
            monitor.stop()
        monitor_reader.close()
        if owned and context.deployment is not None:
            context.deployment.close()
            context.deployment = None  # type: ignore[assignment]

    app = FastAPI(
        title="emailq",
        version="0.1.0",
        summary="Queue outbound email in priority lanes",
        lifespan=lifespan,
    )
    app.state.context = context
    problems.install(app)
    routes.install(app, context)
    batch_routes.install(app, context)
    webhook_routes.install(app, context)
    monitor_reader = monitoring.install(app, context)
    app.add_middleware(BodyLimit, max_bytes=api.max_body_bytes)
    # Added last, so outermost: a flooding tenant's 429 skips everything else.
    app.add_middleware(FloodGate, keys=lambda: context.deployment.keys, budget=context.budget)
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


def app_from_settings() -> FastAPI:
    """For ``uvicorn --factory emailq.api.app:app_from_settings``: the settings from
    ``EMAILQ_CONFIG`` and the environment."""
    return create_app(Settings.load())
