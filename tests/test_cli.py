"""The command line, run in-process through click's runner against real brokers."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from emailq.broker import NewMessage, open_broker
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
