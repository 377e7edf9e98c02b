"""Per-provider send latency (issue 12): each message timed from the moment it goes out
(the gate's yes) to the provider's answer, through a real SMTP sink, counted under the
provider that tried it, and carried into the snapshot and ``/v1/stats``'s providers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from emailq.broker import Stats
from emailq.deployment import Deployment
from emailq.monitor.recorder import Recorder, sample_body
from emailq.monitor.series import current, series
from emailq.monitor.snapshot import build_snapshot
from emailq.providers import Rendered
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.sink import SmtpSink, free_port


def rendered(n: int) -> list[Rendered]:
    body = b"From: a@x.example\r\nTo: b@y.example\r\nSubject: Hi\r\n\r\nHello\r\n"
    return [Rendered(f"m{i}", "a@x.example", (f"b{i}@y.example",), body) for i in range(n)]


async def send(provider: SmtpProvider, n: int) -> None:
    try:
        await provider.send_batch(rendered(n))
    finally:
        await provider.close()


def test_each_accepted_send_is_timed_once_under_its_provider() -> None:
    recorder = Recorder("w", "smtp")
    with SmtpSink() as sink:
        provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=sink.port, pool_size=4))
        provider.observe_sends(recorder.record_send)
        asyncio.run(send(provider, 40))
        assert sink.count == 40
    tries = recorder.take().sends["smtp"]
    assert (tries.sent, tries.failed, tries.retried) == (40, 0, 0)
    assert tries.latency.count == 40
    slowest = tries.latency.quantile(1.0)
    assert slowest is not None and 0 < slowest < 30


def test_an_unreachable_provider_counts_as_down_with_no_latency() -> None:
    recorder = Recorder("w", "smtp")
    provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=free_port(), pool_size=1))
    provider.observe_sends(recorder.record_send)
    asyncio.run(send(provider, 3))
    tries = recorder.take().sends.get("smtp")
    # Refused before any message went out: nothing was tried, or each try was "down".
    assert tries is None or (tries.sent == 0 and tries.latency.count == 0)


def test_a_chain_reports_each_member_under_its_own_name(tmp_path: Path) -> None:
    recorder = Recorder("w", "chain")
    with SmtpSink() as sink:
        dead = free_port()
        urls = f"smtp://127.0.0.1:{dead}?pool=1&timeout=2,smtp://127.0.0.1:{sink.port}?pool=2"
        with Deployment.from_url(f"sqlite:///{tmp_path}/q.db", provider={"url": urls}) as d:
            chain = d.open_provider()
            chain.observe_sends(recorder.record_send)

            async def run() -> None:
                try:
                    await chain.send_batch(rendered(5))
                finally:
                    await chain.close()

            asyncio.run(run())
        assert sink.count == 5
    sends = recorder.take().sends
    assert sends[f"smtp://127.0.0.1:{sink.port}"].sent == 5
    assert "chain" not in sends


def test_send_latency_reaches_the_snapshot_and_the_operator_series() -> None:
    recorder = Recorder("w", "smtp", lambda: 1000.0)
    with SmtpSink() as sink:
        provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=sink.port, pool_size=2))
        provider.observe_sends(recorder.record_send)
        asyncio.run(send(provider, 10))
    body = sample_body(recorder.take(), "w", "smtp", 1000.0)
    snapshot = build_snapshot(1005.0, Stats(lanes={}, taken_at=1005.0), [body], None,
                              {"smtp": True}, 3600.0, 15.0)  # fmt: skip
    now = current([snapshot], 30.0)["providers"]["smtp"]
    assert now["healthy"] is True
    assert now["send"]["tries"] == now["send"]["accepted"] == 10
    assert now["send"]["error_rate"] == 0.0
    assert 0 < now["send"]["p50"] <= now["send"]["p99"]
    [point] = series([snapshot], 15.0)
    assert point["providers"]["smtp"]["accepted"] == 10
