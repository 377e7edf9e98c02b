"""`emailq loadtest`: the pure parts (latency summary, schedule, mix, SLOs, report), then short
real runs against the embedded service: worker processes, sink processes, SMTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from click.testing import CliRunner

from conftest import REDIS_URL, require_redis
from emailq.cli import cli
from emailq.client import Client
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.sink import free_port
from emailq_loadtest import report
from emailq_loadtest.generator import arrivals, emails, lane_of
from emailq_loadtest.leansink import LeanSmtp
from emailq_loadtest.measure import LatencySummary, Ledger, ResourceLog, WindowFigures
from emailq_loadtest.scenarios import EVENT_KINDS, parse_duration, resolve
from emailq_loadtest.slo import (
    Accounting,
    SloConfig,
    delivery_verdicts,
    evaluate,
    passed,
    step_verdicts,
)
from emailq_loadtest.svg import log_ticks, nice_ticks

# -- pure parts -------------------------------------------------------------------------------


def test_latency_summary() -> None:
    summary = LatencySummary.of([0.3, 0.1, 0.2])
    assert (summary.count, summary.p50, summary.max) == (3, 0.2, 0.3)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("2min", 120), ("1h", 3600), ("1h30m", 5400), ("90", 90),
     ("500ms", 0.5)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "fast", "3 parsecs", "-1s"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_open_loop_schedule_is_ordered_deterministic_and_at_the_rate() -> None:
    scenario = resolve("standard", duration_s=600, rate_per_min=10_000)
    schedule = list(arrivals(scenario, seed=1))
    assert [a.at for a in schedule] == sorted(a.at for a in schedule)
    assert schedule[0].at >= 0 and schedule[-1].at < 600
    assert [(a.at, a.recipients) for a in schedule] == [
        (a.at, a.recipients) for a in arrivals(scenario, seed=1)
    ]
    assert schedule != list(arrivals(scenario, seed=2))
    messages = sum(a.recipients for a in schedule)
    assert abs(messages - 100_000) / 100_000 < 0.05, messages


def test_evenly_spaced_arrivals_hit_the_rate_exactly() -> None:
    from dataclasses import replace

    scenario = replace(resolve("standard", duration_s=60, rate_per_min=600), poisson=False)
    singles = [a for a in arrivals(scenario) if a.kind.kind == "payment_reminder"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(singles)]
    assert gaps and max(gaps) - min(gaps) < 1e-9  # 600/min × 22% → one every 0.4545 s
    assert gaps[0] == pytest.approx(60 / (600 * 0.22))
    assert len(singles) in (131, 132)


def test_large_runs_keep_their_spacing_across_segments() -> None:
    scenario = resolve("wedding-day", duration_s=60, rate_per_min=15_000)
    for seed in range(5):
        offered = sum(a.recipients for a in arrivals(scenario, seed))
        assert abs(offered / scenario.offered() - 1) < 0.1, (seed, offered)


def test_wedding_day_has_the_saturday_shape_with_a_2x_ceremony_peak() -> None:
    scenario = resolve("wedding-day", duration_s=14 * 3600, rate_per_min=1_500)
    windows = scenario.windows()
    counts = Counter[int]()
    for arrival in arrivals(scenario, seed=3):
        counts[arrival.segment] += arrival.recipients
    rate = {i: counts[i] / (end - start) for i, (start, end, _) in enumerate(windows)}
    labels = [segment.label for _, _, segment in windows]
    peak, late_morning = labels.index("16:00 ceremony peak"), labels.index("10:00 late morning")
    assert rate[peak] / rate[late_morning] == pytest.approx(2.0, rel=0.1)
    assert max(rate, key=lambda i: rate[i]) == peak
    assert scenario.peak_rate_per_min() == 3_000
    assert scenario.offered() == pytest.approx(1_500 * 14 * 60, rel=0.02)  # the mean ≈ 1x


def test_wedding_day_mix_is_realistic() -> None:
    scenario = resolve("wedding-day", duration_s=3 * 3600, rate_per_min=3_000)
    by_kind: Counter[str] = Counter()
    by_lane: Counter[Lane] = Counter()
    sizes: dict[str, list[int]] = {}
    now = datetime(2026, 6, 13, 16, tzinfo=UTC)
    for arrival in arrivals(scenario, seed=4):
        by_kind[arrival.kind.kind] += arrival.recipients
        by_lane[lane_of(arrival, now)] += arrival.recipients
        sizes.setdefault(arrival.kind.kind, []).append(arrival.recipients)
    total = sum(by_kind.values())
    assert 0.35 < by_kind["invitation"] / total < 0.55
    assert all(200 <= n <= 500 for n in sizes["invitation"])
    assert statistics.mean(sizes["invitation"]) == pytest.approx(350, rel=0.1)
    assert 0 < by_kind["ceremony_change"] / total < 0.04  # a few critical changes
    assert by_kind["vendor_update"] and by_kind["rsvp_reminder"]
    assert 0 < by_lane[Lane.CRITICAL] < by_lane[Lane.WEDDING_DAY] < by_lane[Lane.BULK]
    assert by_lane[Lane.PRE_WEDDING]
    today = {a.wedding for a in arrivals(scenario, seed=4) if a.kind.kind == "vendor_update"}
    assert len(today) > 30  # many weddings at once


def test_each_event_kind_lands_in_its_lane_through_the_real_intake() -> None:
    from emailq.intake import to_new_message

    scenario = resolve("wedding-day", duration_s=600, rate_per_min=15_000)
    seen: dict[str, Lane] = {}
    for arrival in arrivals(scenario, seed=5):
        if arrival.kind.kind in seen:
            continue
        at = datetime.now(UTC)
        [first, *_] = emails(arrival, at)
        lane = to_new_message(parse_email(first), at).lane
        assert lane == lane_of(arrival, at)
        seen[arrival.kind.kind] = lane
    assert seen["invitation"] is Lane.BULK
    assert seen["ceremony_change"] is Lane.CRITICAL
    assert seen["vendor_update"] is Lane.WEDDING_DAY
    assert seen["thank_you"] is Lane.BULK
    assert set(seen) <= set(EVENT_KINDS)


def test_stress_ramps_up_in_steps() -> None:
    scenario = resolve("stress", duration_s=60, step_s=15)
    rates = [scenario.rate_per_min * s.multiplier for s in scenario.segments]
    assert rates == [20_000, 30_000, 40_000, 50_000]
    assert [round(end - start) for start, end, _ in scenario.windows()] == [15] * 4
    assert resolve("stress", rate_per_min=60_000, step_rate_per_min=20_000).segments[1].label \
        == "80,000/min"  # fmt: skip
    with pytest.raises(ValueError, match="unknown scenario"):
        resolve("tuesday")


def _window(sent: int, in_time: int, lanes: dict[Lane, LatencySummary]) -> WindowFigures:
    by_lane = {lane: s.count for lane, s in lanes.items()}
    return WindowFigures(0, 10, sent, in_time, lanes, by_lane)


def _lanes(critical: float, wedding_day: float) -> dict[Lane, LatencySummary]:
    return {
        lane: LatencySummary(0, 0, 0, 0, 0) for lane in Lane
    } | {
        Lane.CRITICAL: LatencySummary(10, critical / 2, critical, critical, critical),
        Lane.WEDDING_DAY: LatencySummary(10, wedding_day / 2, wedding_day, wedding_day,
                                         wedding_day),
    }  # fmt: skip


def test_slo_verdicts() -> None:
    config = SloConfig()
    sent = {Lane.CRITICAL: 10, Lane.WEDDING_DAY: 10}
    good = evaluate(config, _window(100, 100, _lanes(0.5, 2.0)), _lanes(0.5, 2.0), sent,
                    Accounting(100, 100, 0), "1/min")  # fmt: skip
    assert passed(good) and len(good) == 6
    slow = evaluate(config, _window(100, 100, _lanes(1.5, 2.0)), _lanes(1.5, 2.0), sent,
                    Accounting(100, 100, 0), "1/min")  # fmt: skip
    assert [v.name for v in slow if not v.ok] == ["critical p99"]
    behind = evaluate(config, _window(100, 90, _lanes(0.5, 2.0)), _lanes(0.5, 2.0), sent,
                      Accounting(100, 100, 0), "1/min")  # fmt: skip
    assert [v.name for v in behind if not v.ok] == ["sustained throughput at 1/min"]
    lossy = delivery_verdicts(config, Accounting(10_000, 9_995, 1))
    assert [v.ok for v in lossy] == [True, False, False]  # 99.95% success, but 5 lost, 1 dup
    assert not passed([])
    empty = evaluate(config, _window(0, 0, _lanes(0.5, 2.0)), _lanes(0.5, 2.0), sent,
                     Accounting(0, 0, 0), "1/min")  # fmt: skip
    assert not empty[0].ok and empty[0].actual == "nothing was offered"


def test_a_lane_without_mail_passes_but_one_with_nothing_delivered_fails() -> None:
    lanes = _lanes(0.5, 2.0) | {Lane.CRITICAL: LatencySummary(0, 0, 0, 0, 0)}
    quiet = step_verdicts(SloConfig(), _window(10, 10, lanes), "x")
    assert all(v.ok for v in quiet) and "no mail" in quiet[1].actual
    window = WindowFigures(0, 10, 10, 5, lanes, {lane: 5 for lane in Lane})
    assert [v.name for v in step_verdicts(SloConfig(), window, "x") if not v.ok] == [
        "sustained throughput at x", "critical p99"
    ]  # fmt: skip


def test_ledger_accounts_for_every_id() -> None:
    ledger = Ledger(start=1000.0)
    ledger.ignore(["warm"])
    ledger.deliver([("early", 1000.4), ("warm", 1000.0), ("warm2", 1000.0)])  # before their
    ledger.ignore(["warm2"])  # registration
    ledger.register(["a", "b", "c", "early"], [Lane.CRITICAL, Lane.BULK, Lane.BULK,
                    Lane.CRITICAL], [1000.0, 1000.0, 1001.0, 1000.2], at=1000.3)  # fmt: skip
    ledger.deliver([("a", 1000.5), ("b", 1003.5), ("a", 1000.6), ("stranger", 1000.7)])
    assert (ledger.sent, ledger.delivered, ledger.duplicates) == (4, 3, 1)
    assert set(ledger.pending()) == {"c"}
    assert ledger.unexpected() == 1 and ledger.warmup_seen == 2
    assert list(ledger.lanes[Lane.CRITICAL].latency) == pytest.approx([0.2, 0.5])
    window = ledger.window(0, 2, grace=1.0)
    assert (window.sent, window.delivered_in_time) == (4, 2)  # b came at 3.5 > 2 + 1
    assert window.sent_by_lane[Lane.BULK] == 2
    assert ledger.live(1004.0).backlog == 1


def _small_figures(tmp_path: Path) -> dict[str, Any]:
    scenario = resolve("wedding-day", duration_s=10, rate_per_min=600)
    ledger = Ledger(start=0.0)
    ids = [f"m{i}" for i in range(40)]
    lanes = [Lane.CRITICAL, Lane.WEDDING_DAY, Lane.BULK, Lane.PRE_WEDDING] * 10
    ledger.register(ids, lanes, [i / 4 for i in range(40)], at=0.0)
    ledger.deliver([(m, i / 4 + 0.05 * (1 + i % 7)) for i, m in enumerate(ids[:-1])])
    memory = ResourceLog()
    memory.sample(1.0, {"self": __import__("os").getpid()})
    accounting = Accounting(ledger.sent, ledger.delivered, ledger.duplicates)
    verdicts = delivery_verdicts(SloConfig(), accounting)
    return report.build(
        scenario=scenario, service={"mode": "test"}, ledger=ledger, accounting=accounting,
        lost={"late (still queued)": 1}, unexpected=0, slo=SloConfig(), verdicts=verdicts,
        memory=memory,
    )  # fmt: skip


def test_report_is_self_contained_html_with_plots_and_json(tmp_path: Path) -> None:
    figures = _small_figures(tmp_path)
    json_path, html_path = report.write(figures, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["accounting"]["sent"] == 40 and data["accounting"]["lost"] == 1
    assert data["passed"] is False
    page = html_path.read_text()
    assert page.count("<svg") == 3 and page.count("<polyline") >= 6
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "FAIL" in page and "critical p99 objective" in page


def test_the_lean_sink_speaks_enough_smtp_and_notes_each_id() -> None:
    received: list[tuple[str, float]] = []

    async def exchange() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: LeanSmtp(lambda *r: received.append(r)), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5)
            await client.connect()
            for n in range(3):
                body = f"Subject: x\r\nX-Emailq-Id: id{n}\r\n\r\n.leading dot\r\nbye\r\n"
                await client.sendmail("a@example.com", ["b@example.com"], body)
            await client.quit()

    asyncio.run(exchange())
    assert [message_id for message_id, _ in received] == ["id0", "id1", "id2"]


def test_svg_ticks() -> None:
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert log_ticks(1, 1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


# -- short real runs against the embedded service -----------------------------------------------


def loadtest(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["loadtest", "--report-dir", str(report_dir), "--no-live", *args]
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    figures = json.loads((report_dir / "report.json").read_text())
    return result.exit_code, figures, result.output


def assert_consistent(figures: dict[str, Any], tmp_path: Path) -> None:
    account = figures["accounting"]
    assert account["delivered"] + account["lost"] == account["sent"] > 0
    assert account["duplicates"] == 0 and account["unexpected"] == 0
    assert sum(f["sent"] for f in figures["lanes"].values()) == account["sent"]
    assert sum(f["delivered"] for f in figures["lanes"].values()) == account["delivered"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<svg") >= 3  # throughput, latency over time, distribution (+ memory)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "args"),
    [
        ("standard", ["--duration", "3s", "--rate", "600"]),
        ("wedding-day", ["--duration", "4s", "--rate", "6000"]),
        ("endurance", ["--duration", "3s", "--rate", "600", "--sink", "lean"]),
    ],
)
def test_a_modest_run_passes_every_slo(tmp_path: Path, scenario: str, args: list[str]) -> None:
    code, figures, output = loadtest(tmp_path, "--scenario", scenario, *args)
    assert code == 0, output
    assert figures["passed"] and all(v["ok"] for v in figures["slo"]["verdicts"])
    assert figures["accounting"]["lost"] == 0
    assert_consistent(figures, tmp_path)
    assert {"worker-0", "worker-1", "sink-0"} <= set(figures["memory"]["processes"])
    assert "PASS" in output and "report.html" in output


@pytest.mark.slow
def test_a_throttled_sink_fails_the_verdict(tmp_path: Path) -> None:
    # The sink stalls 50 ms a message (20 emails/s) while 100 a second are offered.
    code, figures, output = loadtest(
        tmp_path,
        "--scenario",
        "standard",
        "--duration",
        "2s",
        "--rate",
        "6000",
        "--sink-delay",
        "0.05",
        "--drain-timeout",
        "1s",
    )
    assert code == 1, output
    failed = {v["name"] for v in figures["slo"]["verdicts"] if not v["ok"]}
    assert {"sustained throughput at 6,000/min", "no loss", "success rate"} <= failed
    assert figures["accounting"]["lost"] > 0
    assert sum(figures["accounting"]["lost_breakdown"].values()) == figures["accounting"]["lost"]
    assert_consistent(figures, tmp_path)
    assert "FAIL" in output


@pytest.mark.slow
def test_a_provider_rate_limit_far_below_the_offer_fails_too(tmp_path: Path) -> None:
    code, figures, _ = loadtest(
        tmp_path, "--scenario", "standard", "--duration", "2s", "--rate", "1200",
        "--provider-rate", "2", "--drain-timeout", "1s", "--slo-p99", "wedding_day=off",
    )  # fmt: skip
    assert code == 1
    assert not figures["slo"]["verdicts"][0]["ok"]
    assert "wedding_day p99" not in {v["name"] for v in figures["slo"]["verdicts"]}
    assert_consistent(figures, tmp_path)


@pytest.mark.slow
def test_stress_reports_the_highest_rate_held(tmp_path: Path) -> None:
    code, figures, output = loadtest(
        tmp_path, "--scenario", "stress", "--rate", "1200", "--step-rate", "1200",
        "--step-duration", "1.5s", "--duration", "3s",
    )  # fmt: skip
    stress = figures["stress"]
    assert [s["rate_per_min"] for s in stress["steps"]] == [1200, 2400]
    assert all(s["sent"] for s in stress["steps"])
    assert stress["highest_rate_held_per_min"] == 2400
    assert code == 0, output
    assert "highest rate held: 2,400/min" in output
    assert_consistent(figures, tmp_path)


@pytest.mark.slow
def test_stress_stops_at_the_first_step_that_breaks(tmp_path: Path) -> None:
    code, figures, _ = loadtest(
        tmp_path, "--scenario", "stress", "--rate", "1200", "--step-rate", "12000",
        "--step-duration", "1.5s", "--duration", "4.5s", "--sink-delay", "0.03",
        "--drain-timeout", "1s",
    )  # fmt: skip
    steps = figures["stress"]["steps"]
    assert steps[0]["ok"] and not steps[1]["ok"]
    assert len(steps) == 2  # the ramp ends at the first step that broke
    assert figures["stress"]["highest_rate_held_per_min"] == 1200
    assert code == 1  # mail was left undelivered


@pytest.mark.slow
@pytest.mark.redis
def test_a_run_on_the_redis_broker(tmp_path: Path) -> None:
    require_redis()
    code, figures, output = loadtest(
        tmp_path, "--scenario", "wedding-day", "--duration", "4s", "--rate", "6000",
        "--broker-url", REDIS_URL,
    )  # fmt: skip
    assert code == 0, output
    assert figures["service"]["broker"] == "redis"
    assert_consistent(figures, tmp_path)


@pytest.mark.slow
def test_a_run_with_webhooks_reports_each_sent_email_s_event_and_its_lag(tmp_path: Path) -> None:
    code, figures, output = loadtest(
        tmp_path, "--scenario", "standard", "--duration", "3s", "--rate", "1200", "--webhooks"
    )
    assert code == 0, output
    hooks, delivered = figures["webhooks"], figures["accounting"]["delivered"]
    assert delivered > 0 and hooks["by_type"] == {"email.sent": delivered}
    assert hooks["expected_sent"] == delivered
    assert (hooks["duplicates"], hooks["bad_signatures"]) == (0, 0)
    lag = hooks["sent_lag_ms"]
    assert 0 < lag["p50"] <= lag["p99"] <= lag["max"]
    assert {"webhooks", "receiver"} <= set(figures["memory"]["processes"])
    assert (
        "webhook events: " in output
        and "Webhooks</h2>" in (tmp_path / "report" / "report.html").read_text()
    )
    assert_consistent(figures, tmp_path)


def test_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    target = ["--target", "http://x", "--api-key", "k", "--sink-port", "9"]
    for args in (["--duration", "soon"], ["--slo-p99", "vip=1"], ["--target", "http://x",
                 "--embedded"], ["--target", "http://127.0.0.1:9", "--api-key", "k"],
                 [*target, "--webhooks"]):  # fmt: skip
        result = runner.invoke(cli, ["loadtest", "--report-dir", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)


@pytest.fixture
def running_api(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """`emailq serve` and an `emailq worker` delivering to a port a load test will open."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    key = CliRunner().invoke(cli, ["keys", "create", "--broker-url", url, "--tenant", "lt"])
    secret = key.output.strip().splitlines()[-1]
    api_port, sink_port = free_port(), free_port()
    emailq = [sys.executable, "-m", "emailq"]
    processes = [
        subprocess.Popen([*emailq, "serve", "--broker-url", url, "--port", str(api_port)]),
        subprocess.Popen([*emailq, "worker", "--broker-url", url,
                          "--provider-url", f"smtp://127.0.0.1:{sink_port}"]),
    ]  # fmt: skip
    try:
        with Client(f"http://127.0.0.1:{api_port}", secret) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    client.queues()
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        yield f"http://127.0.0.1:{api_port}", secret, sink_port
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


@pytest.mark.slow
def test_a_target_run_drives_a_running_api_over_http(
    tmp_path: Path, running_api: tuple[str, str, int]
) -> None:
    target, secret, sink_port = running_api
    code, figures, output = loadtest(
        tmp_path, "--scenario", "standard", "--duration", "2s", "--rate", "3000",
        "--target", target, "--api-key", secret, "--sink-port", str(sink_port),
    )  # fmt: skip
    assert code == 0, output
    assert figures["service"]["mode"] == "target"
    assert_consistent(figures, tmp_path)
