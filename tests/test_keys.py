"""API keys: the operator flag on both stores, an older SQLite store, a store that is down."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis

from deployments import deployment_for
from emailq.errors import BrokerUnavailable
from emailq.keys import RedisKeyStore, SQLiteKeyStore
from emailq.sink import free_port


def test_operator_keys_are_stored_and_read_back(broker_url: str) -> None:
    with deployment_for(broker_url) as deployment:
        _, plain = deployment.keys.create("acme")
        made, secret = deployment.keys.create("ops", "dashboards", operator=True)
        assert made.operator
        deployment.keys._cache.clear()
        found, tenant_key = deployment.keys.verify(secret), deployment.keys.verify(plain)
        assert found is not None and found.operator and found.tenant == "ops"
        assert tenant_key is not None and not tenant_key.operator
        assert [k.operator for k in deployment.keys.list()] == [False, True]


def test_a_store_from_before_operator_keys_gains_the_column(tmp_path: Path) -> None:
    path = str(tmp_path / "queue.db")
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
            " tenant TEXT NOT NULL, name TEXT NOT NULL, trusted INTEGER NOT NULL,"
            " created_at REAL NOT NULL, revoked_at REAL)"
        )
        db.execute("INSERT INTO api_keys VALUES ('k1', 'h1', 'acme', '', 0, 1.0, NULL)")
    store = SQLiteKeyStore(path)
    try:
        [old] = store.list()
        assert (old.key_id, old.operator) == ("k1", False)
    finally:
        store.close()


def test_a_key_store_that_cannot_answer_is_the_queue_unavailable() -> None:
    closed = redis.Redis(port=free_port(), socket_connect_timeout=1, retry_on_error=[])
    store = RedisKeyStore(closed, "emailq-test")
    with pytest.raises(BrokerUnavailable):
        store.verify("eq_abc_" + "x" * 40)
