"""A tenant already refused for flooding is refused again here, in front of everything:
before routing, exception handling and the app's other middleware (issue 11).

The route does the same check (``TenantBudget.refuse_if_flooding``) after routing and
authentication; through the whole stack a 429 cost the API process about 0.7 of an
accepted email's CPU (benchmarks/api.py --scenario flood), so a tenant at ten times its
rate more than doubled the work of the one process every other tenant shares. Here it
takes the key from the in-process cache only: an unknown key, or any doubt, goes on to
the app, which answers as before.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from emailq.api.auth import TenantBudget
from emailq.api.problems import Problem, problem_response
from emailq.keys import KeyStore

GATED = frozenset({"/v1/emails", "/v1/emails/batch"})


class FloodGate:
    def __init__(self, app: ASGIApp, keys: Callable[[], KeyStore], budget: TenantBudget) -> None:
        self.app = app
        self.keys = keys
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GATED:
            refusal = self._refusal(scope)
            if refusal is not None:
                response = problem_response(refusal.status, refusal.detail,
                                            headers=refusal.headers)  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Problem | None:
        if not self.budget.refusing:  # nobody is refused now: nothing to look up
            return None
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, secret = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        known, key = self.keys().cached(secret.strip())
        if not known or key is None:
            return None
        try:
            self.budget.refuse_if_flooding(key.tenant)
        except Problem as problem:
            return problem
        return None
