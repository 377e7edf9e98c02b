"""The autoscaler against a real broker (both backends): what it observes, one per queue,
decisions counted; and bad autoscale input refused with its name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emailq.autoscale.controller import Autoscaler, config_from_settings
from emailq.autoscale.observe import Observer
from emailq.broker import Broker, NewMessage
from emailq.clock import ManualClock
from emailq.errors import ConfigurationError
from emailq.lanes import Lane
from emailq.settings import AutoscaleSection, Settings


def test_the_observer_measures_depth_mail_due_soon_and_rates(
    broker: Broker, clock: ManualClock
) -> None:
    observer = Observer(broker, lookahead_s=900)
    broker.enqueue_many([NewMessage(b"x", lane=Lane.BULK) for _ in range(300)])
    first = observer.observe(workers=2)
    assert (first.lanes[Lane.BULK].depth, first.lanes[Lane.BULK].arrival_rate) == (300, 0.0)
    clock.advance(10)
    due = clock() + 600
    broker.enqueue_many([NewMessage(b"x", lane=Lane.CRITICAL, send_at=due) for _ in range(50)])
    broker.complete(broker.lease("w", 200, 30))  # two workers delivered 200 in 10 s
    second = observer.observe(workers=2)
    assert second.lanes[Lane.CRITICAL].due_soon == 50
    assert second.lanes[Lane.CRITICAL].arrival_rate == 5.0
    assert second.lanes[Lane.BULK].depth == 100
    assert second.rate_per_worker == 10.0


def test_the_autoscaler_grows_the_pool_for_a_ceremony_whose_mail_waits(
    broker: Broker, clock: ManualClock
) -> None:
    # 3,000 wedding emails scheduled an hour ahead (past the 15-minute look-ahead), through
    # a provider that takes 0.1/s per worker: the lanes do not see them yet; their
    # ceremony, 40 minutes after, does.
    config = config_from_settings(AutoscaleSection(worker_rate=0.1, ceremony_margin_s=600))
    ceremony = clock() + 6000
    due = clock() + 3600
    mail = [NewMessage(b"x", lane=Lane.WEDDING_DAY, send_at=due, ceremony_at=ceremony)] * 3000
    broker.enqueue_many(mail)
    seen = Observer(broker, 900, config.ceremony_horizon_s).observe(workers=2)
    assert seen.ceremonies == ((ceremony, 3000),)
    assert sum(load.due_soon + load.depth for load in seen.lanes.values()) == 0
    decision = Autoscaler(broker, config, 15).step(2)
    assert decision is not None and decision.workers == 9  # 3,000 / (0.1/s × 90 min) × 1.5
    assert "ceremony in 100 min: 3,000 wedding emails" in decision.reason


def test_one_autoscaler_decides_per_queue_and_its_decisions_are_counted(broker: Broker) -> None:
    config = config_from_settings(AutoscaleSection(emergency_queued=10))
    first, second = Autoscaler(broker, config, 15), Autoscaler(broker, config, 15)
    second.holder = "another-machine:1"
    assert first.step(2) is not None
    assert second.step(2) is None  # the queue's lease is the first's
    broker.enqueue_many([NewMessage(b"x") for _ in range(10)])
    decision = first.step(2)
    assert decision is not None and (decision.workers, decision.direction) == (20, "up")
    registry = first.metrics.registry
    labels = {"queue": first.metrics.queue, "direction": "up"}
    assert registry.get_sample_value("emailq_autoscale_decisions_total", labels) == 1
    assert (
        registry.get_sample_value("emailq_autoscale_workers", {"queue": first.metrics.queue}) == 20
    )
    first.close()  # hands the queue over at once
    assert second.step(20) is not None


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("pattern", "sat 24:00=1.0", r"autoscale\.pattern .*hour 24 in 'sat 24:00=1\.0' is out"),
        ("pattern", "sat 16:00=-2", r"autoscale\.pattern .*multiplier -2 in 'sat 16:00=-2' is neg"),
        ("season", "5-10=-1.5", r"autoscale\.season .*multiplier -1\.5 in '5-10=-1\.5' is neg"),
        ("protected", "sat 14:00-25:00", r"autoscale\.protected .*hour 25 .*outside 00-23"),
        ("timezone", "Mars/Olympus", r"autoscale\.timezone .*'Mars/Olympus' is not known"),
        ("min_workers", 5, r"autoscale\.min_workers \(5\) is above autoscale\.max_workers \(2\)"),
    ],
)  # fmt: skip
def test_bad_autoscale_settings_are_refused_naming_them(
    setting: str, value: object, message: str
) -> None:
    flags = {"autoscale": {setting: value, "max_workers": 2}}
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(flags=flags, environ={})


def test_run_refuses_a_minimum_above_the_maximum() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emailq", "run", "--autoscale", "5:2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Invalid value for '--autoscale': the minimum 5 is above the maximum 2" in result.stderr
