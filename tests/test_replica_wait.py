"""``?wait=N`` on a Redis broker URL: an enqueue is acknowledged only once N replicas have
it (the Sentinel test shows it under a failover; here, the refusals)."""

from __future__ import annotations

import uuid

import pytest

from conftest import redis_url_with_prefix, require_redis
from emailq.broker import NewMessage, State, open_broker
from emailq.broker.redis_client import connect
from emailq.errors import BrokerUnavailable, ConfigurationError


def test_without_the_replicas_asked_for_an_enqueue_is_not_acknowledged() -> None:
    require_redis()
    url = redis_url_with_prefix(f"emailq-test-{uuid.uuid4().hex}")
    with open_broker(url) as plain:
        replicas = int(plain.client.info("replication")["connected_slaves"])
    try:
        with open_broker(f"{url}&wait={replicas + 1}&wait_ms=50") as broker:
            with pytest.raises(BrokerUnavailable, match=f"only {replicas} of {replicas + 1}"):
                broker.enqueue_many([NewMessage(b"ceremony moved", idempotency_key="k1")])
            # Stored all the same: the retry with the same key finds it, no second copy.
            with pytest.raises(BrokerUnavailable):
                broker.enqueue_many([NewMessage(b"ceremony moved", idempotency_key="k1")])
            assert broker.stats().count(State.QUEUED) == 1
    finally:
        with open_broker(url) as leftover:
            leftover.purge()


@pytest.mark.parametrize("query", ["wait=x", "wait=-1", "wait=1&wait_ms=0", "wait_ms=soon"])
def test_bad_wait_options_are_refused(query: str) -> None:
    with pytest.raises(ConfigurationError, match="wait"):
        connect(f"redis://127.0.0.1:6379/0?{query}")
    with pytest.raises(ConfigurationError, match="wait"):
        connect(f"redis+sentinel://127.0.0.1:26379/mail?{query}")
