"""What an operator sees of the chain (``emailq providers``, ``GET /v1/providers``) and
how bad chain settings are refused: an error naming the setting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from click.testing import CliRunner

from deployments import deployment_for
from emailq.api import create_app
from emailq.cli import cli
from emailq.deployment import Deployment
from emailq.errors import ConfigurationError
from emailq.settings import Settings, redact_url

CHAIN = "smtp://u:secret@relay-a:587,resend://api.resend.com"


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url, provider={"url": CHAIN}) as opened:
        opened.health_store.update(
            "smtp://relay-a:587",
            lambda h: replace(h, down=True, failures=3, last_check=1.8e9, reason="refused"),
        )
        yield opened


def test_emailq_providers_shows_state_last_check_and_failures(
    deployment: Deployment, broker_url: str
) -> None:
    args = ["providers", "--broker-url", broker_url, "--provider-url", "smtp://u:secret@relay-a:587",
            "--provider-url", "resend://api.resend.com"]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], r["state"], r["failures"]) for r in rows] == [
        ("smtp://relay-a:587", "down", 3), ("resend://api.resend.com", "active", 0)]  # fmt: skip
    table = CliRunner().invoke(cli, args)
    assert "relay-a" in table.output and "down" in table.output
    assert "secret" not in table.output + result.output


@pytest.mark.anyio
async def test_the_api_shows_the_chain_to_operators_only(deployment: Deployment) -> None:
    _, operator = deployment.keys.create("ops", operator=True)
    _, tenant = deployment.keys.create("acme")
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
        seen = await client.get("/v1/providers", headers={"Authorization": f"Bearer {operator}"})
        refused = await client.get("/v1/providers", headers={"Authorization": f"Bearer {tenant}"})
    assert seen.status_code == 200
    assert [p["state"] for p in seen.json()["providers"]] == ["down", "active"]
    assert refused.status_code == 403


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"EMAILQ_PROVIDER_URL": "smtp://a:25,,resend://"}, "provider.url", "entry 2"),
        ({"EMAILQ_PROVIDER_URL": "smtp://a:25,ftp://b"}, "provider.url", "unknown provider URL"),
        ({"EMAILQ_PROVIDER_CHECK_INTERVAL_S": "-1"}, "provider.check_interval_s", "greater than"),
        ({"EMAILQ_PROVIDER_FAILBACK_S": "-5"}, "provider.failback_s", "greater than"),
        ({"EMAILQ_PROVIDER_FAIL_AFTER_CHECKS": "0"}, "provider.fail_after_checks", "greater"),
    ],
)
def test_bad_chain_settings_name_the_setting(env: dict[str, str], named: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        Settings.load(environ=env)
    assert named in str(error.value) and says in str(error.value)


def test_a_chain_is_redacted_entry_by_entry() -> None:
    assert redact_url(CHAIN) == "smtp://u:***@relay-a:587,resend://api.resend.com"
    settings = Settings.load(environ={"EMAILQ_PROVIDER_URL": CHAIN})
    assert "secret" in settings.secrets()
