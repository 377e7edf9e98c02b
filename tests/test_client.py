"""The Python clients and `emailq send` against the API served by uvicorn on a real socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner

from deployments import deployment_for
from emailq.api import create_app
from emailq.broker import Broker, State
from emailq.cli import cli
from emailq.client import ApiError, AsyncClient, Client
from emailq.sink import free_port

EMAIL = {"from": "planner@weddings.example", "to": ["guest@example.org"],
         "subject": "Rain plan", "text": "We move indoors."}  # fmt: skip


@dataclass
class Served:
    url: str
    secret: str
    broker: Broker
    broker_url: str


@pytest.fixture
def served(broker_url: str) -> Iterator[Served]:
    deployment = deployment_for(broker_url, api={"check_provider": False})
    _, secret = deployment.keys.create("acme")
    port = free_port()
    app = create_app(deployment)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.01)
    with deployment:
        yield Served(f"http://127.0.0.1:{port}", secret, deployment.broker, broker_url)
        server.should_exit = True
        thread.join(10)


def test_the_sync_client_sends_reads_and_cancels(served: Served) -> None:
    with Client(served.url, served.secret) as client:
        queued = client.send(EMAIL, idempotency_key="rain-1")
        assert client.send(EMAIL, idempotency_key="rain-1").id == queued.id
        assert client.get(queued.id)["state"] == "queued"
        ids = client.send_batch(
            {"from": "a@weddings.example", "subject": "Hi {{ n }}", "text": "x"},
            [{"to": f"g{i}@example.org", "variables": {"n": i}} for i in range(3)],
        )
        assert len(ids) == 3
        assert client.cancel(ids[0]) is True
        assert client.cancel(ids[0]) is False
        assert client.queues()["standard"]["depth"]["queued"] == 3
        with pytest.raises(ApiError) as refused:
            client.send(EMAIL | {"to": "nobody"})
        assert refused.value.status == 422
        assert refused.value.errors[0].field == "to.0.email"


@pytest.mark.anyio
async def test_the_async_client_sends(served: Served) -> None:
    async with AsyncClient(served.url, served.secret) as client:
        queued = await client.send(EMAIL)
        assert (await client.get(queued.id))["lane"] == "standard"
    info = served.broker.get(queued.id)
    assert info is not None and info.state == State.QUEUED


def test_a_wrong_key_is_an_error_not_a_retry_loop(served: Served) -> None:
    with Client(served.url, "eq_wrong") as client, pytest.raises(ApiError) as refused:
        client.send(EMAIL)
    assert refused.value.status == 401


def test_emailq_send_through_the_api_and_from_an_eml_file(served: Served, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, [
        "send", "--api-url", served.url, "--api-key", served.secret,
        "--from", "planner@weddings.example", "--to", "vendor@example.org",
        "--subject", "Ceremony moved", "--text", "To 16:30", "--kind", "ceremony_change",
        "--wedding-id", "w1", "--ceremony-at", "2030-01-01T12:00:00+00:00",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    message_id, lane = result.output.split()
    assert lane == "standard"  # years ahead, even a ceremony change is not urgent yet
    eml = tmp_path / "note.eml"
    eml.write_bytes(
        b"From: Planner <planner@weddings.example>\r\nTo: guest@example.org\r\n"
        b"Subject: Parking\r\nContent-Type: text/plain\r\n\r\nPark at the back.\r\n"
    )
    result = runner.invoke(cli, ["send", "--broker-url", served.broker_url, "--file", str(eml)])
    assert result.exit_code == 0, result.output
    [job_id, _] = result.output.split()
    jobs = {job.id: job for job in served.broker.lease("w", 10, 30)}
    assert json.loads(jobs[job_id].payload)["subject"] == "Parking"
    assert message_id in jobs


def test_retry_pauses_grow_honour_retry_after_and_stop() -> None:
    import httpx

    from emailq.client import RetryPolicy, _pause_before_retry

    policy = RetryPolicy(attempts=3, backoff_s=0.5)
    busy = httpx.Response(503)
    limited = httpx.Response(429, headers={"Retry-After": "7"})
    assert _pause_before_retry(policy, 0, None) == 0.5  # connection failed: retry
    assert _pause_before_retry(policy, 1, busy) == 1.0
    assert _pause_before_retry(policy, 0, limited) == 7.0
    assert _pause_before_retry(policy, 2, busy) is None  # attempts spent
    assert _pause_before_retry(policy, 0, httpx.Response(422)) is None  # not retryable
    assert _pause_before_retry(policy, 0, httpx.Response(202)) is None


def test_guest_lists_through_the_client_and_emailq_batch(served: Served) -> None:
    template = {"from": "a@weddings.example", "subject": "Hi {{ n }}", "text": "x",
                "wedding": {"wedding_id": "w9", "kind": "invitation",
                            "ceremony_at": "2031-06-13T16:00:00+02:00"}}  # fmt: skip
    recipients = [{"to": f"g{i}@example.org", "variables": {"n": i}} for i in range(3)]
    with Client(served.url, served.secret) as client:
        queued = client.send_guest_list(template, recipients, idempotency_key="w9-invites")
        assert client.send_guest_list(template, recipients, "w9-invites") == queued
        assert client.batch(queued.batch_id)["counts"]["queued"] == 3
        assert [b["batch_id"] for b in client.batches(wedding_id="w9")] == [queued.batch_id]
        with pytest.raises(ApiError) as refused:
            client.retry_batch(queued.batch_id)
        assert refused.value.status == 409
    runner = CliRunner()
    api = ["--api-url", served.url, "--api-key", served.secret]
    shown = runner.invoke(cli, ["batch", "show", *api, queued.batch_id, "--state", "queued"])
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.output)["recipients"]) == 3
    retried = runner.invoke(cli, ["batch", "retry", *api, queued.batch_id])
    assert retried.exit_code != 0 and "409" in retried.output
    cancelled = runner.invoke(cli, ["batch", "cancel", *api, queued.batch_id])
    assert cancelled.exit_code == 0 and json.loads(cancelled.output)["cancelled"] == 3
    assert {served.broker.get(i).state for i in queued.ids} == {State.CANCELLED}  # type: ignore[union-attr]
