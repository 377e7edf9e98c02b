"""The webhook store's group calls on both brokers: deliveries added once per (endpoint,
event), claimed with their fields, settled together (delivered, failed, pending again)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from deployments import deployment_for
from emailq.deployment import Deployment
from emailq.webhooks.store import Delivery, DeliveryState, Endpoint, Settlement

NOW = time.time()


@pytest.fixture
def deployment(broker_url: str) -> Iterator[Deployment]:
    with deployment_for(broker_url) as opened:
        yield opened


def delivery(n: int, endpoint_id: str = "wh_a") -> Delivery:
    return Delivery(id=f"{endpoint_id}.evt_{n}", endpoint_id=endpoint_id, event_id=f"evt_{n}",
                    type="email.sent", body=f'{{"n":{n}}}', state=DeliveryState.PENDING,
                    attempts=0, created_at=NOW + n / 1000, next_at=NOW)  # fmt: skip


def test_deliveries_are_added_once_claimed_with_their_fields_and_settled_in_a_group(
    deployment: Deployment,
) -> None:
    store = deployment.webhooks
    store.add_endpoint(Endpoint(id="wh_a", tenant="acme", url="https://a.example/h",
                                events=("email.sent",), secret="whsec_x",
                                created_at=NOW))  # fmt: skip
    assert store.add_deliveries([delivery(n) for n in range(5)]) == 5
    assert store.add_deliveries([delivery(n) for n in range(3, 7)]) == 2  # 3, 4 stored already
    claimed = store.claim_due(NOW + 1, 10)
    assert sorted(d.id for d in claimed) == [f"wh_a.evt_{n}" for n in range(7)]
    as_added = dataclasses.replace({d.id: d for d in claimed}["wh_a.evt_2"], next_at=NOW)
    assert as_added == delivery(2)  # (next_at: the claim's, on SQLite)
    assert store.claim_due(NOW + 1, 10) == []  # held by the claim
    store.settle_many([
        Settlement("wh_a.evt_0", DeliveryState.DELIVERED, NOW + 1),
        Settlement("wh_a.evt_1", DeliveryState.FAILED, NOW + 1, "HTTP 410"),
        Settlement("wh_a.evt_2", DeliveryState.PENDING, NOW + 5, "HTTP 503"),
    ])  # fmt: skip
    by_id = {d.id: d for d in store.deliveries("wh_a", None, 100)}
    assert (by_id["wh_a.evt_0"].state, by_id["wh_a.evt_0"].attempts) == (DeliveryState.DELIVERED, 1)
    assert (by_id["wh_a.evt_1"].state, by_id["wh_a.evt_1"].last_error) == (
        DeliveryState.FAILED, "HTTP 410")  # fmt: skip
    again = by_id["wh_a.evt_2"]
    assert (again.state, again.next_at, again.last_error) == (
        DeliveryState.PENDING, NOW + 5, "HTTP 503")  # fmt: skip
    assert [d.id for d in store.claim_due(NOW + 6, 10)] == ["wh_a.evt_2"]
    assert store.claim_due(NOW + 1000, 10) != []  # the rest, once their claim has lapsed
