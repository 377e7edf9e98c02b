"""Schemathesis against a live `emailq serve` (issue 11): no server error and no status code
that the OpenAPI spec does not document, on any route, for any generated request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from deployments import deployment_for
from emailq.sink import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real server on SQLite, and a tenant's key."""
    home: Path = tmp_path_factory.mktemp("schema-live")
    url = f"sqlite:///{home / 'queue.db'}"
    with deployment_for(url) as deployment:
        _, secret = deployment.keys.create("acme")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    env |= {
        "EMAILQ_BROKER_URL": url,
        "EMAILQ_API_PORT": str(port),
        "EMAILQ_API_TENANT_RATE": "1000",
    }
    server = subprocess.Popen([sys.executable, "-m", "emailq", "serve"], env=env, cwd=home)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{base}/health", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "emailq serve did not start"
            time.sleep(0.1)
    yield base, secret
    server.terminate()
    server.wait(10)


def test_the_live_api_answers_no_5xx_and_only_documented_statuses(live: tuple[str, str]) -> None:
    base, secret = live
    # The schema comes from the running server, so it is loaded here and each operation is
    # driven by its own hypothesis strategy (pytest collection starts no server).
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(
                base_url=base,
                headers={"Authorization": f"Bearer {secret}"},
                checks=[not_a_server_error, status_code_conformance],
            )

        answers_as_documented()
