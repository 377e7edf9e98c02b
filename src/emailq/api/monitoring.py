"""The monitor's read side over HTTP: ``GET /v1/stats``, ``GET /v1/alerts``, silences,
``GET /dashboard`` (one page, its assets served from the package: no CDN), and the fleet
totals on ``/metrics``. An operator API key (``emailq keys create --operator``) sees
everything; any other key sees its own tenant's deliveries only.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from emailq.api import auth
from emailq.api.problems import Problem
from emailq.api.routes import V1_PROBLEMS, problems_of
from emailq.keys import ApiKey
from emailq.monitor.fleet import FleetCollector
from emailq.monitor.rules import load_rules, parse_duration
from emailq.monitor.series import MAX_POINTS, HistoryCache, PointCache, current, series
from emailq.monitor.silences import silence, silences, unsilence
from emailq.monitor.store import MonitorStore, open_store

if TYPE_CHECKING:
    from emailq.api.app import ApiContext

ASSETS = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "LICENSE-uPlot.txt": "text/plain",
}
# The page and its scripts come from this origin only; data from this API only.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'"


def parse_time(text: str | None, now: float, default_ago: float) -> float:
    """``1h`` (that long ago), an ISO 8601 time with its offset, or epoch seconds."""
    if text is None or not text.strip():
        return now - default_ago
    text = text.strip()
    try:
        number = float(text)
        return number if number > 1e9 else now - number
    except ValueError:
        pass
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        hint = f"{text!r} is not a time: give 1h, 30m, epoch seconds or ISO 8601"
        raise Problem(400, hint) from None
    if at.tzinfo is None:
        raise Problem(400, "give the time's offset, e.g. +02:00 or Z")
    return at.timestamp()


class MonitorReader:
    """The API process's view of the monitor's store, opened on first use."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._store: MonitorStore | None = None
        self._cache: HistoryCache | None = None
        self.points = PointCache()
        # (tenant, step, since, until, last snapshot) → the JSON answered
        self.answers: dict[tuple[Any, ...], bytes] = {}

    @property
    def store(self) -> MonitorStore:
        if self._store is None:
            self._store = open_store(self.ctx.deployment.broker, self.ctx.deployment.clock)
        return self._store

    @property
    def cache(self) -> HistoryCache:
        if self._cache is None:
            interval = self.ctx.deployment.settings.monitor.interval_s
            self._cache = HistoryCache(self.store, interval_s=interval)
        return self._cache

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store, self._cache = None, None

    @staticmethod
    def is_operator(key: ApiKey) -> bool:
        return key.operator

    def stats(self, key: ApiKey, since_text: str | None, until_text: str | None,
              step_text: str | None) -> bytes:  # fmt: skip
        """The series as JSON. Since is aligned down to the step, so requests within one
        interval (dashboards polling) share one answer until the next snapshot."""
        settings = self.ctx.deployment.settings.monitor
        now = self.ctx.deployment.clock()
        since = parse_time(since_text, now, 3600.0)
        until = parse_time(until_text, now, 0.0) if until_text else now
        try:
            step = parse_duration(step_text) if step_text else settings.interval_s
        except ValueError as error:
            raise Problem(400, f"step: {error}") from None
        step = max(step, settings.interval_s)
        if until <= since:
            raise Problem(400, "until must come after since")
        if (until - since) / step > MAX_POINTS:
            raise Problem(400, f"at most {MAX_POINTS} points: give a longer step")
        since = math.floor(since / step) * step
        snapshots = self.cache.range(since, until, now)
        tenant = None if self.is_operator(key) else key.tenant
        last = snapshots[-1].at if snapshots else None
        cache_key = (tenant, step, since, None if until_text is None else until, last)
        answer = self.answers.get(cache_key)
        if answer is not None:
            return answer
        body: dict[str, Any] = {
            "since": since, "until": until, "step": step, "tenant": tenant,
            "interval_s": settings.interval_s,
            "points": series(snapshots, step, tenant, self.points),
        }  # fmt: skip
        if tenant is None:
            body["current"] = current(snapshots, 3 * settings.publish_s)
        answer = json.dumps(body, separators=(",", ":")).encode()
        if len(self.answers) >= 256:
            self.answers.clear()
        self.answers[cache_key] = answer
        return answer

    def alerts(self) -> dict[str, Any]:
        settings = self.ctx.deployment.settings.monitor
        now = self.ctx.deployment.clock()
        latest = self.cache.range(now - 4 * settings.interval_s - 60, now, now)
        rules = load_rules(settings.rules_file)
        return {
            "alerts": latest[-1].alerts if latest else [],
            "silences": silences(self.store, now),
            "rules": [
                {"name": r.name, "metric": r.metric, "op": r.op, "threshold": r.threshold,
                 "for_s": r.for_s, "window_s": r.window_s, "severity": r.severity,
                 "lanes": list(r.lanes), "summary": r.describe()}
                for r in rules
            ],
        }  # fmt: skip


def install(app: FastAPI, ctx: ApiContext) -> MonitorReader:  # noqa: C901 - one closure per route
    reader = MonitorReader(ctx)
    ctx.metrics.registry.register(FleetCollector(lambda: reader.store))

    async def operator(request: Request) -> ApiKey:
        key = await auth.authenticate(request, ctx.deployment.keys)
        if not reader.is_operator(key):
            raise Problem(403, "only an operator key may see or change alerts")
        return key

    @app.get("/v1/stats", responses=problems_of(*V1_PROBLEMS, 400))
    async def stats(
        request: Request, since: str | None = None, until: str | None = None,
        step: str | None = None,
    ) -> Response:  # fmt: skip
        """The monitor's history as series: per lane depth, throughput, success rate and
        P50/P95/P99 per step (an operator key: every tenant, workers, providers, alerts)."""
        key = await auth.authenticate(request, ctx.deployment.keys)
        body = await run_in_threadpool(reader.stats, key, since, until, step)
        return Response(body, media_type="application/json")

    @app.get("/v1/alerts", responses=problems_of(*V1_PROBLEMS, 403))
    async def alerts(request: Request) -> JSONResponse:
        """Pending and firing alerts, silences and the rules (operator keys only)."""
        await operator(request)
        return JSONResponse(await run_in_threadpool(reader.alerts))

    @app.post("/v1/alerts/silences", responses=problems_of(*V1_PROBLEMS, 400, 403, 404))
    async def add_silence(request: Request) -> JSONResponse:
        """``{"rule": "low_throughput", "for": "1h"}``: its notices held back that long."""
        await operator(request)
        try:
            data = json.loads(await request.body())
            rule, duration = str(data["rule"]), parse_duration(data.get("for", "1h"))
        except (ValueError, KeyError, TypeError):
            raise Problem(400, 'send {"rule": NAME, "for": "1h"}') from None
        names = {r.name for r in load_rules(ctx.deployment.settings.monitor.rules_file)}
        if rule not in names:
            raise Problem(404, f"no alert rule {rule!r}")
        now = ctx.deployment.clock()
        await run_in_threadpool(silence, reader.store, rule, now + duration, now)
        return JSONResponse({"rule": rule, "until": now + duration})

    @app.delete("/v1/alerts/silences/{rule}", responses=problems_of(*V1_PROBLEMS, 403, 404))
    async def remove_silence(request: Request, rule: str) -> JSONResponse:
        await operator(request)
        found = await run_in_threadpool(unsilence, reader.store, rule, ctx.deployment.clock())
        if not found:
            raise Problem(404, f"no silence for {rule!r}")
        return JSONResponse({"rule": rule, "until": None})

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = resources.files("emailq.api").joinpath("dashboard/index.html").read_text()
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP})

    @app.get("/dashboard/{asset}", include_in_schema=False)
    async def dashboard_asset(asset: str) -> Response:
        if asset not in ASSETS:
            raise Problem(404, f"no dashboard file {asset!r}")
        data = resources.files("emailq.api").joinpath(f"dashboard/{asset}").read_bytes()
        return Response(data, media_type=ASSETS[asset],
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    return reader
