"""Alert rules: the defaults, TOML overrides, and bad rules refused naming rule and field;
the state machine: pending → firing → resolved, hysteresis, repeat."""

from __future__ import annotations

from pathlib import Path

import pytest

from emailq.errors import ConfigurationError
from emailq.lanes import Lane
from emailq.monitor.alerts import Alerts
from emailq.monitor.recorder import Recorder
from emailq.monitor.rules import DEFAULT_RULES, Rule, load_rules, parse_duration
from emailq.monitor.snapshot import LaneState, Snapshot
from monitoring import outcome


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90
    for bad in ("", "5 minutes", "m", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_defaults_are_the_issue_s_thresholds() -> None:
    rules = {rule.name: rule for rule in load_rules(None)}
    assert rules["low_throughput"].threshold == 100 and rules["low_throughput"].when == "queued"
    assert rules["low_success_rate"].threshold == 0.95
    assert rules["deep_queue"].threshold == 5000
    assert rules["wedding_day_success_rate"].lanes == ("critical", "wedding_day")
    assert rules["critical_p99"].threshold == 1.0
    assert rules["wedding_day_p99"].threshold == 5.0
    assert {"dead_letters", "no_workers", "provider_down"} <= set(rules)


def test_a_file_overrides_adds_and_disables(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
[[rule]]
name = "critical_p99"
threshold = 0.5
for = "30s"
[[rule]]
name = "deep_queue"
enabled = false
[[rule]]
name = "bulk_old"
metric = "oldest_age_s"
lanes = ["bulk"]
op = ">"
threshold = 3600
severity = "warning"
labels = { team = "growth" }
""")
    rules = {rule.name: rule for rule in load_rules(path)}
    assert rules["critical_p99"].threshold == 0.5 and rules["critical_p99"].for_s == 30
    assert rules["critical_p99"].lanes == ("critical",)  # the rest from the default
    assert "deep_queue" not in rules
    assert rules["bulk_old"].labels == (("team", "growth"),)


@pytest.mark.parametrize(
    ("table", "field", "says"),
    [
        ('metric = "latency"\nop = ">"\nthreshold = 1', "metric", "unknown metric 'latency'"),
        ('metric = "p99_s"\nop = "=>"\nthreshold = 1', "op", "unknown operator '=>'"),
        ('metric = "p99_s"\nop = ">"\nthreshold = 1\nfor = "5 minutes"', "for", "duration"),
        ('metric = "p99_s"\nop = ">"\nthreshold = "high"', "threshold", "number"),
        ('metric = "p99_s"\nop = ">"\nthreshold = 1\nlanes = ["vip"]', "lanes", "lanes"),
        ('metric = "p99_s"\nop = ">"\nthreshold = 1\nsevere = "x"', "severe", "unknown field"),
        ('metric = "p99_s"\nop = ">"', "threshold", "required"),
    ],
)
def test_a_bad_rule_names_the_rule_and_the_field(
    tmp_path: Path, table: str, field: str, says: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f'[[rule]]\nname = "mine"\n{table}\n')
    with pytest.raises(ConfigurationError) as error:
        load_rules(path)
    assert f"alert rule 'mine', field '{field}'" in str(error.value)
    assert says in str(error.value)


def snapshot_with(at: float, p99: float, sent: int = 100) -> Snapshot:
    recorder = Recorder("w", "smtp", lambda: at)
    for _ in range(sent):
        recorder.record([outcome(Lane.CRITICAL, at - p99)])
    window = recorder.take()
    snapshot = Snapshot(at=at, elapsed_s=15)
    snapshot.lanes = {"critical": LaneState({"queued": 5}, 1.0)}
    snapshot.delivery = {"critical": window.cells[("critical", "default")]}
    return snapshot


RULE = Rule("critical_p99", "p99_s", ">", 1.0, for_s=30, lanes=("critical",), hysteresis=0.1,
            repeat_s=600)  # fmt: skip


def run(values: list[float], rule: Rule = RULE) -> list[tuple[float, str]]:
    alerts = Alerts([rule], worker_stale_s=15)
    history: list[Snapshot] = []
    notices = []
    for i, value in enumerate(values):
        history.append(snapshot_with(1000.0 + 15 * i, value))
        for notice in alerts.evaluate(history, history[-1].at):
            notices.append((notice.at - 1000.0, notice.status))
    return notices


def test_fires_after_its_for_duration_and_resolves_once() -> None:
    notices = run([0.5, 2, 2, 2, 2, 0.5, 0.5])
    assert notices == [(15 * 3, "firing"), (15 * 5, "resolved")]  # pending at 15, firing at 45


def test_a_short_breach_never_fires() -> None:
    assert run([2, 2, 0.5, 2, 0.5]) == []


def test_hovering_at_the_threshold_does_not_flap() -> None:
    # 1.05 is back under the threshold, but not by the 10 % hysteresis: it stays firing
    values = [2, 2, 2, 1.05, 1.02, 1.08, 1.01, 1.05, 1.09, 0.8]
    notices = run(values)
    assert [status for _, status in notices] == ["firing", "resolved"]


def test_repeats_while_firing() -> None:
    notices = run([2] * 50)
    assert [status for _, status in notices] == ["firing", "repeat"]


def test_states_survive_a_new_monitor() -> None:
    alerts = Alerts([RULE], 15)
    history = [snapshot_with(1000.0 + 15 * i, 2) for i in range(4)]
    for snapshot in history:
        alerts.evaluate(history[: history.index(snapshot) + 1], snapshot.at)
    taken_over = Alerts([RULE], 15)
    taken_over.load(alerts.dump())
    assert taken_over.states["critical_p99"].state == "firing"
    later = [*history, snapshot_with(1060.0, 2)]
    assert taken_over.evaluate(later, 1060.0) == []  # no second firing notice


def test_default_rules_evaluate_on_an_empty_snapshot() -> None:
    alerts = Alerts(DEFAULT_RULES, 15)
    assert alerts.evaluate([Snapshot(at=1.0, elapsed_s=15)], 1.0) == []
