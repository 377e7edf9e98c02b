"""The monitor's history in the broker: one series however many monitors, trimmed at its
retention, percentiles merged from the workers' sketches."""

from __future__ import annotations

import itertools
import json

import pytest

from emailq.broker import Action
from emailq.clock import ManualClock
from emailq.lanes import Lane
from emailq.monitor.recorder import Recorder, sample_body
from emailq.monitor.runner import Monitor
from emailq.monitor.series import HistoryCache, series
from emailq.monitor.snapshot import Snapshot
from emailq.monitor.store import open_store
from emailq.percentiles import percentile
from monitoring import monitored, outcome


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_030.0)  # all of each test's snapshots in one hour


def test_history_is_trimmed_at_its_retention(broker_url: str, clock: ManualClock) -> None:
    with monitored(broker_url, clock, interval_s=15, retention_s=60) as deployment:
        monitor = Monitor(deployment, channels=[])
        try:
            for _ in range(20):
                assert monitor.tick() is not None
                clock.advance(15)
            kept = monitor.store.history(0, clock())
        finally:
            monitor.close()
    ats = [at for at, _ in kept]
    assert ats == sorted(ats)
    assert clock() - 15 - ats[0] <= 60  # nothing older than the retention
    assert 4 <= len(ats) <= 5
    assert all(b - a == 15 for a, b in itertools.pairwise(ats))


def test_two_monitors_write_one_series(broker_url: str, clock: ManualClock) -> None:
    with (monitored(broker_url, clock, interval_s=15) as one,
          monitored(broker_url, clock, interval_s=15) as two):  # fmt: skip
        first, second = Monitor(one, channels=[]), Monitor(two, channels=[])
        try:
            written = []
            for step in range(12):
                if step == 6:  # the writer stops; the other takes over once its lease lapses
                    first.close()
                for monitor in (first, second) if step < 6 else (second,):
                    snapshot = monitor.tick()
                    if snapshot is not None:
                        written.append((monitor.owner, snapshot.at))
                clock.advance(7.5)  # two ticks per slot: the second finds it written
            history = second.store.history(0, clock())
        finally:
            second.close()
    slots = [at for at, _ in history]
    assert len(slots) == len(set(slots)) == len(written)
    owners = [owner for owner, _ in written]
    assert owners[0] == first.owner and owners[-1] == second.owner
    assert set(owners) == {first.owner, second.owner}
    # one writer at a time: the second wrote nothing while the first held the lease
    assert owners == sorted(owners, key=lambda owner: owner == second.owner)


def test_percentiles_come_from_the_merged_worker_sketches(
    broker_url: str, clock: ManualClock
) -> None:
    with monitored(broker_url, clock, interval_s=15) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker, clock)
        raw: list[float] = []
        try:
            # two workers with very different latencies: their p99s average to nonsense
            for name, spread in (("w1", 0.1), ("w2", 3.0)):
                recorder = Recorder(name, "smtp", clock)
                for i in range(500):
                    latency = spread * (1 + i / 500)
                    raw.append(latency)
                    recorder.record([outcome(Lane.STANDARD, clock() - latency)])
                store.publish_sample(sample_body(recorder.take(), name, "smtp", clock()))
            snapshot = monitor.tick()
        finally:
            store.close()
            monitor.close()
    assert snapshot is not None
    stored = Snapshot.from_json(snapshot.to_json()).delivery["standard"].latency.quantile(0.99)
    exact = percentile(sorted(raw), 99)
    assert stored is not None and abs(stored - exact) <= 0.02 * exact
    assert set(snapshot.workers) == {"w1", "w2"}


def test_a_longer_step_merges_sketches_and_a_tenant_sees_its_own(
    broker_url: str, clock: ManualClock
) -> None:
    with monitored(broker_url, clock, interval_s=15) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker, clock)
        start = clock()
        try:
            for step in range(8):
                recorder = Recorder("w", "smtp", clock)
                latency = 0.1 if step < 4 else 2.0
                for _ in range(100):
                    recorder.record([outcome(Lane.BULK, clock() - latency, tenant="acme")])
                recorder.record([outcome(Lane.BULK, clock(), Action.RETRY, tenant="other")])
                store.publish_sample(sample_body(recorder.take(), "w", "smtp", clock()))
                monitor.tick()
                clock.advance(15)
            snapshots = HistoryCache(store).range(start - 1, clock())
        finally:
            store.close()
            monitor.close()
    [point] = series(snapshots, 3600)
    bulk = point["lanes"]["bulk"]
    assert bulk["sent"] == 800 and bulk["retried"] == 8
    assert bulk["p50"] == pytest.approx(0.1, rel=0.02)  # half the deliveries were 0.1 s
    assert bulk["p99"] == pytest.approx(2.0, rel=0.02)
    assert "depth" in bulk
    [mine] = series(snapshots, 3600, tenant="acme")
    assert mine["lanes"]["bulk"]["retried"] == 0 and "depth" not in mine["lanes"]["bulk"]
    json.dumps(mine)


def test_the_reader_asks_the_store_once_per_interval_and_sees_each_new_snapshot(
    broker_url: str, clock: ManualClock
) -> None:
    clock.value = 1_800_000_000.0  # on a slot boundary: the monitor writes at 0, 15, 30 …
    with monitored(broker_url, clock, interval_s=15) as deployment:
        monitor = Monitor(deployment, channels=[])
        store = open_store(deployment.broker, clock)
        cache = HistoryCache(store, interval_s=15)
        try:
            first = monitor.tick()
            assert first is not None
            assert [s.at for s in cache.range(clock() - 60, clock(), clock())] == [first.at]
            reads = cache.reads
            for _ in range(14):  # within the slot: no newer snapshot can exist yet
                clock.advance(1)
                assert [s.at for s in cache.range(clock() - 60, clock(), clock())] == [first.at]
            assert cache.reads == reads
            clock.advance(1)
            second = monitor.tick()
            assert second is not None and second.at == first.at + 15
            seen = [s.at for s in cache.range(clock() - 60, clock(), clock())]
            assert seen == [first.at, second.at]
            assert cache.reads == reads + 1
        finally:
            store.close()
            monitor.close()
