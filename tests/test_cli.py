"""The command line, run in-process through click's runner against real brokers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from emailq.broker import NewMessage, State, open_broker
from emailq.cli import cli
from emailq.lanes import Lane


def test_status_reports_depth_per_lane_and_state(broker_url: str) -> None:
    with open_broker(broker_url) as broker:
        broker.enqueue_many([NewMessage(b"x", lane=Lane.BULK)] * 3)
        broker.enqueue_many([NewMessage(b"x", lane=Lane.CRITICAL)])
    result = CliRunner().invoke(cli, ["status", "--broker-url", broker_url, "--json"])
    assert result.exit_code == 0, result.output
    lanes = json.loads(result.output)["lanes"]
    assert lanes["bulk"]["counts"]["queued"] == 3
    assert lanes["critical"]["counts"]["queued"] == 1
    table = CliRunner().invoke(cli, ["status", "--broker-url", broker_url])
    assert re.search(r"bulk\s+│\s+3", table.output), table.output


def test_get_shows_a_message_and_refuses_an_unknown_id(broker_url: str) -> None:
    with open_broker(broker_url) as broker:
        [message_id] = broker.enqueue_many([NewMessage(b"x", tenant="acme")])
    result = CliRunner().invoke(cli, ["get", "--broker-url", broker_url, message_id])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tenant"] == "acme"
    missing = CliRunner().invoke(cli, ["get", "--broker-url", broker_url, "nope"])
    assert missing.exit_code != 0 and "no message nope" in missing.output


def test_requeue_dead_by_lane_tenant_since_and_id(broker_url: str) -> None:
    with open_broker(broker_url) as broker:
        ids = broker.enqueue_many(
            [NewMessage(b"x", lane=Lane.BULK, tenant="acme", max_attempts=1)] * 3
            + [NewMessage(b"x", lane=Lane.STANDARD, tenant="acme", max_attempts=1)]
            + [NewMessage(b"x", lane=Lane.BULK, tenant="globex", max_attempts=1)]
        )
        for job in broker.lease("w", 10, 30):
            broker.bury(job, "550")

    def requeue(*args: str) -> str:
        result = CliRunner().invoke(cli, ["requeue", "--broker-url", broker_url, *args])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert requeue("--dead", "--since", since) == "requeued 0 dead messages"
    assert requeue("--dead", "--id", ids[0], "--id", ids[3]) == "requeued 2 dead messages"
    assert requeue("--dead", "--lane", "bulk", "--tenant", "acme", "--since", "2h") == (
        "requeued 2 dead messages"
    )
    assert requeue("--dead") == "requeued 1 dead message"
    with open_broker(broker_url) as broker:
        assert broker.stats().count(State.QUEUED) == 5
    missing = CliRunner().invoke(cli, ["requeue", "--broker-url", broker_url])
    assert missing.exit_code != 0 and "--dead" in missing.output
    naive = CliRunner().invoke(cli, ["requeue", "--dead", "--since", "2026-01-01T00:00",
                                     "--broker-url", broker_url])  # fmt: skip
    assert naive.exit_code != 0 and "offset" in naive.output


def test_a_bad_broker_url_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["status", "--broker-url", "postgres://x"])
    assert result.exit_code != 0
    assert "unknown broker URL scheme 'postgres'" in str(result.exception)


def test_demo_delivers_everything_critical_first() -> None:
    result = CliRunner().invoke(
        cli, ["demo", "--weddings", "2", "--guests", "150", "--vendors", "10"]
    )
    assert result.exit_code == 0, result.output
    rows = {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"│\s*(\w+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", result.output)
    }
    assert rows["bulk"] == (300, 300)
    assert rows["critical"] == (10, 10)
    assert rows["wedding_day"] == (10, 10)
    assert "overtook" in result.output


def test_send_takes_a_schedule_an_expiry_and_an_attempt_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    result = CliRunner().invoke(cli, [
        "send", "--broker-url", url, "--from", "a@weddings.example", "--to", "b@example.org",
        "--subject", "Rehearsal", "--text", "Friday 6 pm",
        "--send-at", "2030-01-01T10:00:00+00:00", "--expires-at", "2030-01-02T10:00:00+00:00",
        "--max-attempts", "3",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    message_id = result.output.split()[0]
    with open_broker(url) as broker:
        info = broker.get(message_id)
    assert info is not None and info.state is State.SCHEDULED
    assert info.max_attempts == 3
    assert info.expires_at == datetime(2030, 1, 2, 10, tzinfo=UTC).timestamp()
