"""API keys, one or more per tenant, stored as SHA-256 hashes next to the queue.

A key is ``eq_<key id>_<secret>``; only its hash is stored, so a leaked database gives no
usable key (the secret has 256 random bits, so a plain hash is enough: nothing to brute
force). Keys live in the broker's own store (the SQLite file, or Redis under the queue's
prefix), so every API process of a queue sees the same keys; a
:class:`emailq.deployment.Deployment` opens the store that fits its broker.
"""

from __future__ import annotations

import abc
import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

import redis

from emailq.clock import Clock, now
from emailq.errors import BrokerUnavailable

PREFIX = "eq_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    trusted: bool  # may set an explicit priority
    created_at: float
    revoked_at: float | None = None
    operator: bool = False  # sees every tenant's queue counts and /metrics; sends as its tenant

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """``(key_id, full key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


class KeyStore(abc.ABC):
    def __init__(self, clock: Clock = now, cache_s: float = 5.0) -> None:
        self.clock = clock
        self.cache_s = cache_s  # a revoked key stops working within this many seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    def create(
        self, tenant: str, name: str = "", trusted: bool = False, operator: bool = False
    ) -> tuple[ApiKey, str]:
        key_id, secret = new_secret()
        key = ApiKey(key_id, tenant, name, trusted, self.clock(), operator=operator)
        self._store(key, digest(secret))
        return key, secret

    def cached(self, secret: str) -> tuple[bool, ApiKey | None]:
        """``(known, key)`` from the in-process cache alone: cheap enough for an event loop."""
        if not secret.startswith(PREFIX) or len(secret) > 200:
            return True, None
        hit = self._cache.get(digest(secret))
        if hit and time.monotonic() - hit[0] < self.cache_s:
            return True, hit[1]
        return False, None

    def verify(self, secret: str) -> ApiKey | None:
        """The active key this secret belongs to, or None."""
        known, key = self.cached(secret)
        if known:
            return key
        hashed = digest(secret)
        at = time.monotonic()
        try:
            key = self._load(hashed)
        except (redis.RedisError, sqlite3.Error) as error:
            # The store lives with the queue: when it cannot answer, neither can the queue
            # (503 + Retry-After), and the request was fine.
            raise BrokerUnavailable(f"the API key store cannot answer: {error}") from None
        found = key if key and key.active else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[hashed] = (at, found)
        return found

    @abc.abstractmethod
    def _store(self, key: ApiKey, hashed: str) -> None: ...

    @abc.abstractmethod
    def _load(self, hashed: str) -> ApiKey | None: ...

    @abc.abstractmethod
    def list(self) -> list[ApiKey]: ...

    @abc.abstractmethod
    def revoke(self, key_id: str) -> bool: ...

    def close(self) -> None:  # noqa: B027 - a store on a shared connection has nothing to close
        """Release what the store opened itself."""


_SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    name TEXT NOT NULL, trusted INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL)"""
_COLUMNS = "key_id, tenant, name, trusted, created_at, revoked_at, operator"


class SQLiteKeyStore(KeyStore):
    def __init__(self, path: str, clock: Clock = now) -> None:
        super().__init__(clock)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}
        if "operator" not in columns:  # a store from before operator keys
            self._db.execute("ALTER TABLE api_keys ADD COLUMN operator INTEGER NOT NULL DEFAULT 0")

    def _store(self, key: ApiKey, hashed: str) -> None:
        with self._lock:
            row = (hashed, key.key_id, key.tenant, key.name, key.trusted, key.created_at)
            self._db.execute(
                f"INSERT INTO api_keys (hash, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, None, key.operator),
            )

    def _load(self, hashed: str) -> ApiKey | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE hash = ?", (hashed,)
            ).fetchone()
        return _row_to_key(row) if row else None

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")
            return [_row_to_key(row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (self.clock(), key_id),
            )
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row_to_key(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant, name, trusted, created_at, revoked_at, operator = row
    return ApiKey(
        str(key_id), str(tenant), str(name), bool(trusted), float(created_at),  # type: ignore[arg-type]
        None if revoked_at is None else float(revoked_at),  # type: ignore[arg-type]
        operator=bool(operator),
    )  # fmt: skip


class RedisKeyStore(KeyStore):
    """``{prefix}:key:<hash>`` → the key's fields; ``{prefix}:keys`` → key id → hash."""

    def __init__(self, client: redis.Redis, prefix: str, clock: Clock = now) -> None:
        super().__init__(clock)
        self.client = client
        self.base = f"{{{prefix}}}"

    def _store(self, key: ApiKey, hashed: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{self.base}:key:{hashed}", mapping={
            "key_id": key.key_id, "tenant": key.tenant, "name": key.name,
            "trusted": int(key.trusted), "created_at": key.created_at,
            "operator": int(key.operator),
        })  # fmt: skip
        pipe.hset(f"{self.base}:keys", key.key_id, hashed)
        pipe.execute()

    def _load(self, hashed: str) -> ApiKey | None:
        fields: dict[bytes, bytes] = self.client.hgetall(f"{self.base}:key:{hashed}")  # type: ignore[assignment]
        if not fields:
            return None
        text = {k.decode(): v.decode() for k, v in fields.items()}
        revoked = text.get("revoked_at")
        return ApiKey(
            text["key_id"], text["tenant"], text["name"], text["trusted"] == "1",
            float(text["created_at"]), float(revoked) if revoked else None,
            operator=text.get("operator") == "1",
        )  # fmt: skip

    def list(self) -> list[ApiKey]:
        hashes: list[bytes] = self.client.hvals(f"{self.base}:keys")  # type: ignore[assignment]
        keys = [self._load(h.decode()) for h in hashes]
        return sorted((k for k in keys if k), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        hashed: bytes | None = self.client.hget(f"{self.base}:keys", key_id)  # type: ignore[assignment]
        if hashed is None:
            return False
        name = f"{self.base}:key:{hashed.decode()}"
        return bool(self.client.hsetnx(name, "revoked_at", self.clock()))
