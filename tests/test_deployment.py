"""The Deployment: the Python intake does what POST /v1/emails does; one object answers
status and health; backend errors arrive as emailq's own; real `emailq` processes take
their settings from it (the Message-ID domain, secrets kept out of logs and output)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployments import deployment_for
from emailq.broker import NewMessage, State, open_broker
from emailq.cli import cli
from emailq.deployment import Deployment
from emailq.errors import BrokerFull, BrokerUnavailable, InvalidEmail
from emailq.message import parse_email
from emailq.sink import SmtpSink, free_port

EMAILQ = [sys.executable, "-m", "emailq"]
EMAIL = {"from": "planner@weddings.example", "to": "guest@example.org",
         "subject": "Ceremony moved to 16:30", "text": "See you there."}  # fmt: skip


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url) as opened:
        yield opened


def test_send_applies_the_lane_policy_tenant_key_and_schedule(deployment: Deployment) -> None:
    ceremony = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    wedding = {"wedding_id": "w1", "ceremony_at": ceremony, "kind": "ceremony_change"}
    queued = deployment.send(EMAIL | {"wedding": wedding, "tenant": "acme"},
                             idempotency_key="change-w1")  # fmt: skip
    assert queued.lane == "critical"
    again = deployment.send(EMAIL | {"wedding": wedding, "tenant": "acme"},
                            idempotency_key="change-w1")  # fmt: skip
    assert again.id == queued.id  # the key, scoped to the tenant, returns the first id
    info = deployment.broker.get(queued.id)
    assert info is not None and info.tenant == "acme" and info.idempotency_key == "change-w1"
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    scheduled = deployment.send(EMAIL | {"send_at": later})
    info = deployment.broker.get(scheduled.id)
    assert info is not None and info.state is State.SCHEDULED


def test_send_many_is_all_or_none_and_names_the_bad_email(deployment: Deployment) -> None:
    with pytest.raises(InvalidEmail) as refused:
        deployment.send_many([EMAIL, EMAIL | {"to": "not an address"}])
    assert [e.field for e in refused.value.errors] == ["1.to.0.email"]
    assert deployment.status().backlog == 0
    queued = deployment.send_many([EMAIL, parse_email(EMAIL)])
    assert len({q.id for q in queued}) == 2 and deployment.status().backlog == 2


@pytest.mark.anyio
async def test_async_send_and_health(deployment: Deployment) -> None:
    queued = await deployment.asend(EMAIL)
    assert queued.lane == "standard"
    health = await deployment.ahealth(check_provider=False)
    assert health.ready and health.broker and health.broker_error is None


def test_health_reports_an_unreachable_provider(broker_url: str) -> None:
    closed = f"smtp://127.0.0.1:{free_port()}"
    with deployment_for(broker_url, provider={"url": closed}) as deployment:
        health = deployment.health()
    assert health.broker and not health.provider and not health.ready
    with (
        SmtpSink() as sink,
        deployment_for(broker_url, provider={"url": f"smtp://127.0.0.1:{sink.port}"}) as deployment,
    ):
        assert deployment.health().ready


def test_the_deployments_broker_refuses_payloads_that_are_not_emails(broker_url: str) -> None:
    with deployment_for(broker_url) as deployment, pytest.raises(ValueError) as refused:
        deployment.broker.enqueue_many([NewMessage(b"not an email")])
    assert "messages[0].payload is not an emailq email" in str(refused.value)
    with open_broker(broker_url) as raw:  # the raw contract takes opaque bytes
        assert raw.enqueue_many([NewMessage(b"opaque")])


def test_a_sqlite_file_that_cannot_be_opened_is_broker_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable, match="unable to open"):
        deployment_for(f"sqlite:///{tmp_path}/no/such/dir/q.db")


@pytest.mark.redis
def test_a_full_redis_is_broker_full_naming_maxmemory(small_redis: str) -> None:
    with deployment_for(small_redis) as deployment, pytest.raises(BrokerFull) as full:
        for _ in range(200):
            deployment.send_many([EMAIL | {"text": "x" * 20_000}] * 20)
    assert "maxmemory" in str(full.value)
    assert isinstance(full.value, BrokerUnavailable)  # so the API answers 503, not 500


@pytest.mark.redis
def test_emailq_status_never_shows_the_broker_password(small_redis: str) -> None:
    for args in (["status"], ["status", "--json"]):
        result = CliRunner().invoke(cli, [*args, "--broker-url", small_redis],
                                    env={"COLUMNS": "300"})  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "s3cret-pass" not in result.output
        assert "redis://:***@127.0.0.1" in result.output


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*EMAILQ, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}


@pytest.mark.slow
def test_a_worker_takes_the_message_id_domain_from_emailq_domain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    with deployment_for(url) as deployment:
        queued = deployment.send(EMAIL)
    with SmtpSink(keep_data=True) as sink:
        env = clean_env() | {"EMAILQ_DOMAIN": "mail.example.org",
                             "EMAILQ_PROVIDER_URL": f"smtp://127.0.0.1:{sink.port}"}  # fmt: skip
        worker = start(["worker", "--broker-url", url], env)
        try:
            assert sink.wait_for(1, 30), "the worker delivered nothing"
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=30)
        data = sink.handler.data[queued.id]
    assert f"Message-ID: <{queued.id}@mail.example.org>".encode() in data


@pytest.mark.slow
def test_a_workers_log_never_holds_its_provider_password(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    with SmtpSink() as sink:
        provider = f"smtp://alice:hunter2-secret@127.0.0.1:{sink.port}?starttls=no"
        env = clean_env() | {"EMAILQ_PROVIDER_URL": provider}
        with deployment_for(url) as deployment:
            deployment.send(EMAIL)  # something to deliver: the login is refused, and logged
        worker = start(["worker", "--broker-url", url, "--lease", "5"], env)
        assert worker.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("unavailable" in x for x in lines):
            lines.append(worker.stdout.readline())
        worker.send_signal(signal.SIGTERM)
        rest, _ = worker.communicate(timeout=30)
        output = "".join(lines) + rest
    assert "PlaintextAuthRefused" in output  # the refused login is logged...
    assert "alice:***@127.0.0.1" in output  # the start-up line names the provider...
    assert "hunter2-secret" not in output  # ...without its password


def test_config_json_is_machine_readable(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "--json"], env={"EMAILQ_DOMAIN": "x.example"})
    shown = json.loads(result.output)
    assert shown["domain"] == {"value": "x.example", "source": "env EMAILQ_DOMAIN"}
