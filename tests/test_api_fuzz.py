"""Schemathesis fuzzes every route from the API's own OpenAPI spec: no input gives a 5xx."""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from deployments import deployment_for
from emailq.api import create_app

# Schemathesis reads the schema when this module is collected, so the app is built here.
_HOME = tempfile.TemporaryDirectory(prefix="emailq-fuzz-")
atexit.register(_HOME.cleanup)
_URL = f"sqlite:///{Path(_HOME.name) / 'queue.db'}"
_DEPLOYMENT = deployment_for(_URL, api={"check_provider": False})
atexit.register(_DEPLOYMENT.close)
_, _SECRET = _DEPLOYMENT.keys.create("fuzz")
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_DEPLOYMENT))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {_SECRET}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400:
        [content_type] = response.headers["content-type"]  # schemathesis lists header values
        assert content_type.startswith("application/problem+json"), response.text[:500]
