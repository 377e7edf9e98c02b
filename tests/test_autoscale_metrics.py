"""The desired pool on /metrics, and deploy/kubernetes/ asking Prometheus for that very series."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deployments import deployment_for
from emailq.api import create_app
from emailq.autoscale.metrics import DESIRED, queue_name
from emailq.broker import NewMessage, open_broker
from emailq.deployment import Deployment
from emailq.lanes import Lane

pytestmark = pytest.mark.anyio
KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"


@pytest.fixture
async def deployment(broker_url: str) -> AsyncIterator[Deployment]:
    with deployment_for(broker_url, autoscale={"worker_rate": 10}) as opened:
        yield opened


async def scrape(deployment: Deployment) -> dict[str, float]:
    transport = httpx.ASGITransport(app=create_app(deployment))
    async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
        text = (await client.get("/metrics")).text
    return {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == DESIRED
        for sample in family.samples
    }


async def test_metrics_export_the_desired_workers_per_queue(deployment: Deployment) -> None:
    queue = queue_name(deployment.broker)
    assert await scrape(deployment) == {queue: 2}  # idle: the minimum
    due = deployment.broker.now() + 600  # a burst due in 10 minutes counts already
    burst = [NewMessage(b"x", lane=Lane.WEDDING_DAY, send_at=due) for _ in range(3000)]
    with open_broker(deployment.settings.broker.url) as raw:  # opaque payloads: no email check
        raw.enqueue_many(burst)
    # 3,000 due within the look-ahead, 120 s deadline, 10/s per worker: 2.5 needed, +50 %
    deadline = time.monotonic() + 5  # the collector keeps a reading for a second
    while (seen := await scrape(deployment)) != {queue: 4} and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert seen == {queue: 4}


def test_the_keda_scaled_object_queries_what_metrics_export() -> None:
    documents = [
        doc
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    [scaled] = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]["name"]
    [workers] = [
        doc for doc in documents
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == target
    ]  # fmt: skip
    assert workers["spec"]["template"]["spec"]["containers"][0]["args"] == ["emailq", "worker"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "1"  # one pod per desired worker
    query = trigger["metadata"]["query"]
    match = re.fullmatch(r'max\((\w+)\{queue="([\w.-]+)"\}\)', query)
    assert match, query
    assert match[1] == DESIRED
    assert match[2] == "emailq"  # the default Redis prefix: what queue_name reports for it
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 20)
