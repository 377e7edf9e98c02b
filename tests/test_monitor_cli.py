"""The monitor's commands: report, alerts silence/list/unsilence, the watch view, and a bad
rules file refused at start naming the rule and the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from emailq.cli import cli
from emailq.clock import ManualClock
from emailq.errors import ConfigurationError
from emailq.lanes import Lane
from emailq.monitor.recorder import Recorder, sample_body
from emailq.monitor.runner import Monitor
from emailq.monitor.series import HistoryCache
from emailq.monitor.store import open_store
from emailq.monitor.watch import snapshot_body, view
from monitoring import monitored, outcome

WEDDING = b'{"wedding":{"wedding_id":"w42","kind":"ceremony_change"},"to":["a@b.example"]}'


def history_on(url: str, day: datetime) -> None:
    clock = ManualClock(day.timestamp() + 10 * 3600 + 15)  # snapshots cover 10:00-10:01
    with monitored(url, clock, interval_s=15) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker, clock)
        for _ in range(4):
            recorder = Recorder("w1", "smtp", clock)
            for _ in range(10):
                recorder.record([outcome(Lane.CRITICAL, clock() - 0.3, payload=WEDDING)])
                recorder.record([outcome(Lane.BULK, clock() - 30)])
            store.publish_sample(sample_body(recorder.take(), "w1", "smtp", clock()))
            monitor.tick()
            clock.advance(15)
        store.close()
        monitor.close()


def test_report_for_a_day_and_a_wedding(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    history_on(url, datetime(2026, 6, 13, tzinfo=UTC))
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--broker-url", url, "--date", "2026-06-13",
                                      "--wedding", "w42", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads((out / "report.json").read_text())
    assert body["lanes"]["critical"]["sent"] == 40 and body["lanes"]["bulk"]["sent"] == 40
    assert body["weddings"]["w42"]["sent"] == 40 and list(body["weddings"]) == ["w42"]
    assert body["hourly"][10]["lanes"]["critical"]["sent"] == 40
    page = (out / "report.html").read_text()
    assert "<svg" in page and "w42" in page and "http://" not in page.split("<svg", 1)[0]
    empty = CliRunner().invoke(cli, ["report", "--broker-url", url, "--date", "2026-06-14",
                                     "--out", str(tmp_path / "none")])  # fmt: skip
    assert empty.exit_code == 0 and "(0 snapshots)" in empty.output


def test_silence_list_and_unsilence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    runner = CliRunner()
    done = runner.invoke(cli, ["alerts", "silence", "deep_queue", "--for", "2h",
                               "--broker-url", url])  # fmt: skip
    assert done.exit_code == 0, done.output
    listed = runner.invoke(cli, ["alerts", "list", "--broker-url", url])
    assert "silenced deep_queue until" in listed.output
    assert (
        runner.invoke(cli, ["alerts", "unsilence", "deep_queue", "--broker-url", url]).exit_code
        == 0
    )
    unknown = runner.invoke(cli, ["alerts", "silence", "nope", "--broker-url", url])
    assert unknown.exit_code != 0 and "no alert rule nope" in unknown.output


def test_a_bad_rules_file_stops_the_monitor_naming_rule_and_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "mine"\nmetric = "p99_s"\nop = "~"\nthreshold = 1\n')
    result = CliRunner().invoke(
        cli, ["monitor", "--broker-url", f"sqlite:///{tmp_path}/q.db"],
        env={"EMAILQ_MONITOR_RULES_FILE": str(rules)},
    )  # fmt: skip
    assert isinstance(result.exception, ConfigurationError)  # `emailq` prints it, exits 2
    assert "alert rule 'mine', field 'op': unknown operator '~'" in str(result.exception)


def test_the_watch_view_shows_lanes_workers_and_alerts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    day = datetime(2026, 6, 13, tzinfo=UTC)
    history_on(url, day)
    with monitored(url) as deployment:
        store = open_store(deployment.broker)
        at = day.timestamp() + 10 * 3600 + 60
        body = snapshot_body(HistoryCache(store), at, 15, 15)
        store.close()
    console = Console(width=140, record=True)
    console.print(view(body, "test"))
    text = console.export_text()
    assert "critical" in text and "wedding_day" in text and "w1" in text
