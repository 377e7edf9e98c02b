"""/v1/stats, /v1/alerts and silences over HTTP: an operator key sees everything, a
tenant's key its own deliveries; the fleet totals on /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emailq.api.app import create_app
from emailq.clock import ManualClock
from emailq.deployment import Deployment
from emailq.lanes import Lane
from emailq.monitor.recorder import Recorder, sample_body
from emailq.monitor.runner import Monitor
from emailq.monitor.store import open_store
from monitoring import AppClient, monitored, outcome


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def deployment(tmp_path: Path, clock: ManualClock) -> Iterator[Deployment]:
    with monitored(f"sqlite:///{tmp_path}/q.db", clock, interval_s=15) as opened:
        monitor = Monitor(opened, channels=[])
        store = open_store(opened.broker, clock)
        try:
            for step in range(8):
                recorder = Recorder("w1", "smtp", clock)
                for tenant, latency in (("acme", 0.2), ("globex", 4.0)):
                    for _ in range(50):
                        recorder.record([outcome(Lane.WEDDING_DAY, clock() - latency,
                                                 tenant=tenant)])  # fmt: skip
                store.publish_sample(sample_body(recorder.take(), "w1", "smtp", clock()))
                monitor.tick()
                clock.advance(15 if step < 7 else 1)
        finally:
            store.close()
            monitor.close()
        yield opened


def client_and_keys(deployment: Deployment) -> tuple[AppClient, str, str]:
    _, operator = deployment.keys.create("ops", operator=True)
    _, acme = deployment.keys.create("acme")
    return AppClient(create_app(deployment)), operator, acme


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_operator_sees_every_tenant_and_the_fleet(deployment: Deployment) -> None:
    client, operator, _ = client_and_keys(deployment)
    reply = client.get("/v1/stats?since=1h&step=60", headers=auth(operator))
    assert reply.status_code == 200
    body = reply.json()
    assert body["tenant"] is None
    assert sum(point["lanes"]["wedding_day"]["sent"] for point in body["points"]) == 800
    lane = body["points"][-1]["lanes"]["wedding_day"]
    assert lane["p50"] == pytest.approx(0.2, rel=0.02)
    assert lane["p99"] == pytest.approx(4.0, rel=0.02)
    assert "depth" in lane
    assert [w["name"] for w in body["current"]["workers"]] == ["w1"]
    assert client.get("/v1/alerts", headers=auth(operator)).status_code == 200


def test_a_tenant_sees_only_its_own_deliveries(deployment: Deployment) -> None:
    client, _, acme = client_and_keys(deployment)
    body = client.get("/v1/stats?since=1h", headers=auth(acme)).json()
    assert body["tenant"] == "acme"
    lane = body["points"][-1]["lanes"]["wedding_day"]
    assert lane["sent"] == 50 and lane["p99"] == pytest.approx(0.2, rel=0.02)
    assert "depth" not in lane and "current" not in body
    assert client.get("/v1/alerts", headers=auth(acme)).status_code == 403


def test_stats_need_a_key_and_sane_parameters(deployment: Deployment) -> None:
    client, operator, _ = client_and_keys(deployment)
    assert client.get("/v1/stats").status_code == 401
    assert client.get("/v1/stats?since=soon", headers=auth(operator)).status_code == 400
    assert client.get("/v1/stats?since=30d&step=1s", headers=auth(operator)).status_code == 400


def test_silences_over_the_api(deployment: Deployment) -> None:
    client, operator, acme = client_and_keys(deployment)
    body = {"rule": "low_throughput", "for": "1h"}
    assert client.post("/v1/alerts/silences", json=body, headers=auth(acme)).status_code == 403
    reply = client.post("/v1/alerts/silences", json=body, headers=auth(operator))
    assert reply.status_code == 200
    assert "low_throughput" in client.get("/v1/alerts", headers=auth(operator)).json()["silences"]
    missing = client.post("/v1/alerts/silences", json={"rule": "nope"}, headers=auth(operator))
    assert missing.status_code == 404
    gone = client.delete("/v1/alerts/silences/low_throughput", headers=auth(operator))
    assert gone.status_code == 200


def test_metrics_export_the_fleet_latency_histogram(deployment: Deployment) -> None:
    client, _, _ = client_and_keys(deployment)
    text = client.get("/metrics").text
    assert 'emailq_fleet_delivery_seconds_bucket{lane="wedding_day",le="0.25"} 400.0' in text
    assert 'emailq_fleet_delivery_seconds_count{lane="wedding_day"} 800.0' in text
    assert 'emailq_fleet_sent_total{lane="wedding_day"} 800.0' in text
    assert "emailq_workers_alive" in text


def test_the_dashboard_page_and_its_assets_are_served(deployment: Deployment) -> None:
    client, _, _ = client_and_keys(deployment)
    page = client.get("/dashboard")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="/', "").split("<body>")[0].lower()
    assert client.get("/dashboard/uPlot.iife.min.js").status_code == 200
    assert client.get("/dashboard/LICENSE-uPlot.txt").text.startswith("The MIT License")
    assert client.get("/dashboard/..%2Fapp.py").status_code == 404
