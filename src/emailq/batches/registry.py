"""Batch records (tenant, wedding, size, when), kept beside the queue like the API keys:
a table in the SQLite file, or hashes under the Redis queue's prefix.

The messages carry their batch id and the broker indexes them (``Broker.batch_members``);
this record adds what a batch is as a whole, so ``GET /v1/batches?wedding_id=`` finds a
tenant's batches without reading their messages.
"""

from __future__ import annotations

import abc
import hashlib
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

from emailq.ids import new_id

LIST_LIMIT = 100  # batches per listing, newest first


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRecord:
    id: str
    tenant: str
    wedding_id: str | None
    created_at: float
    count: int


def new_batch_id(tenant: str, idempotency_key: str | None) -> str:
    """``b_`` + 32 hex digits. With the request's Idempotency-Key the id is derived from
    (tenant, key): a repeated request names the same batch, as it returns the same ids."""
    if idempotency_key is None:
        return f"b_{new_id()}"
    digest = hashlib.sha256(f"{tenant}\x1f{idempotency_key}".encode()).hexdigest()
    return f"b_{digest[:32]}"


class BatchRegistry(abc.ABC):
    @abc.abstractmethod
    def record(self, batch: BatchRecord) -> None:
        """Store a batch; a batch already stored (a repeated request) is left as it is."""

    @abc.abstractmethod
    def get(self, batch_id: str) -> BatchRecord | None: ...

    @abc.abstractmethod
    def list(
        self, tenant: str, wedding_id: str | None = None, limit: int = LIST_LIMIT
    ) -> list[BatchRecord]:
        """A tenant's batches, newest first, those of one wedding when given."""

    def close(self) -> None:  # noqa: B027 - a registry on a shared connection has nothing to close
        """Release what the registry opened itself."""


_SCHEMA = """CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, wedding_id TEXT, created_at REAL NOT NULL,
    count INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_tenant ON batches (tenant, wedding_id, created_at);"""
_COLUMNS = "id, tenant, wedding_id, created_at, count"


class SQLiteBatchRegistry(BatchRegistry):
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.executescript(_SCHEMA)

    def record(self, batch: BatchRecord) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO batches ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (batch.id, batch.tenant, batch.wedding_id, batch.created_at, batch.count),
            )

    def get(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        return _record(row) if row else None

    def list(
        self, tenant: str, wedding_id: str | None = None, limit: int = LIST_LIMIT
    ) -> list[BatchRecord]:
        sql = f"SELECT {_COLUMNS} FROM batches WHERE tenant = ?"
        params: tuple[object, ...] = (tenant,)
        if wedding_id is not None:
            sql += " AND wedding_id = ?"
            params += (wedding_id,)
        with self._lock:
            rows = self._db.execute(f"{sql} ORDER BY created_at DESC LIMIT ?", (*params, limit))
            return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> BatchRecord:
    batch_id, tenant, wedding_id, created_at, count = row
    return BatchRecord(
        id=str(batch_id), tenant=str(tenant),
        wedding_id=None if wedding_id is None else str(wedding_id),
        created_at=float(created_at), count=int(count),
    )  # fmt: skip


class RedisBatchRegistry(BatchRegistry):
    """``{prefix}:batch:<id>`` → the record's fields; ``{prefix}:batches:<tenant>`` (and
    ``…:<tenant>\\x1f<wedding id>``) → zsets of batch ids by creation. Each key lives as
    long as ``ttl_s`` (the longest a batch's messages are kept)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float) -> None:
        self.client = client
        self.base = f"{{{prefix}}}"
        self.ttl_ms = max(1, round(ttl_s * 1000))

    def _index(self, tenant: str, wedding_id: str | None) -> str:
        key = f"{self.base}:batches:{tenant}"
        return key if wedding_id is None else f"{key}\x1f{wedding_id}"

    def record(self, batch: BatchRecord) -> None:
        key = f"{self.base}:batch:{batch.id}"
        if self.client.exists(key):
            return
        fields: dict[str, str | float | int] = {
            "tenant": batch.tenant, "created_at": batch.created_at, "count": batch.count,
        }  # fmt: skip
        if batch.wedding_id is not None:
            fields["wedding_id"] = batch.wedding_id
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(key, self.ttl_ms)
        indexes = [self._index(batch.tenant, None)]
        if batch.wedding_id is not None:
            indexes.append(self._index(batch.tenant, batch.wedding_id))
        for index in indexes:
            pipe.zadd(index, {batch.id: batch.created_at})
            pipe.pexpire(index, self.ttl_ms)
        pipe.execute()

    def get(self, batch_id: str) -> BatchRecord | None:
        fields: dict[bytes, bytes] = self.client.hgetall(f"{self.base}:batch:{batch_id}")  # type: ignore[assignment]
        if not fields:
            return None
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return BatchRecord(
            id=batch_id, tenant=text["tenant"], wedding_id=text.get("wedding_id"),
            created_at=float(text["created_at"]), count=int(text["count"]),
        )  # fmt: skip

    def list(
        self, tenant: str, wedding_id: str | None = None, limit: int = LIST_LIMIT
    ) -> list[BatchRecord]:
        ids: list[bytes] = self.client.zrevrange(self._index(tenant, wedding_id), 0, limit - 1)  # type: ignore[assignment]
        found = [self.get(raw.decode()) for raw in ids]
        return [record for record in found if record is not None]
