"""The webhook store under the Redis queue's prefix.

{p}:wh:e:<id>          hash: an endpoint (tenant, url, events, secret, created_at)
{p}:wh:t:<tenant>      set: the tenant's endpoint ids; {p}:wh:all: every tenant's
{p}:wh:d:<delivery>    hash: a delivery; its id is "<endpoint id>.<event id>", so an
                       event added twice is one delivery. Expires after KEEP_S.
{p}:wh:due             zset: next_at → pending delivery id
{p}:wh:ep:<endpoint>   zset: created_at → delivery id (the newest MAX_LISTED kept)
{p}:wh:cursor          string: the dispatcher's place in the audit feed
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from emailq.webhooks.store import (
    CLAIM_S,
    Delivery,
    DeliveryState,
    Endpoint,
    Settlement,
    WebhookStore,
)

KEEP_S = 8 * 86400  # a delivery's record: its day of retries, then a week to look at it
MAX_LISTED = 10_000

# KEYS[1] due zset; ARGV[1] now, ARGV[2] held until, ARGV[3] limit.
# Returns the ids claimed: due ones, moved to ARGV[2] in the same call (no other sender
# can take them meanwhile).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""
_FIELDS = ("endpoint_id", "event_id", "type", "body", "state", "attempts", "created_at",
           "next_at", "last_error")  # fmt: skip


class RedisWebhookStore(WebhookStore):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.base = f"{{{prefix}}}:wh"
        self._claim = client.register_script(_CLAIM)

    def add_endpoint(self, endpoint: Endpoint) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{self.base}:e:{endpoint.id}", mapping={
            "tenant": endpoint.tenant, "url": endpoint.url, "events": " ".join(endpoint.events),
            "secret": endpoint.secret, "created_at": endpoint.created_at,
        })  # fmt: skip
        pipe.sadd(f"{self.base}:t:{endpoint.tenant}", endpoint.id)
        pipe.sadd(f"{self.base}:all", endpoint.id)
        pipe.execute()

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        fields: dict[bytes, bytes] = self.client.hgetall(f"{self.base}:e:{endpoint_id}")  # type: ignore[assignment]
        if not fields:
            return None
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return Endpoint(id=endpoint_id, tenant=text["tenant"], url=text["url"],
                        events=tuple(text["events"].split()), secret=text["secret"],
                        created_at=float(text["created_at"]))  # fmt: skip

    def endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        key = f"{self.base}:all" if tenant is None else f"{self.base}:t:{tenant}"
        ids: set[bytes] = self.client.smembers(key)  # type: ignore[assignment]
        found = [self.endpoint(raw.decode()) for raw in ids]
        return sorted((e for e in found if e is not None), key=lambda e: e.created_at)

    def remove_endpoint(self, endpoint_id: str) -> bool:
        endpoint = self.endpoint(endpoint_id)
        if endpoint is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{self.base}:e:{endpoint_id}")
        pipe.srem(f"{self.base}:t:{endpoint.tenant}", endpoint_id)
        pipe.srem(f"{self.base}:all", endpoint_id)
        pipe.execute()
        return True

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        check = self.client.pipeline(transaction=False)
        for delivery in deliveries:
            check.exists(f"{self.base}:d:{delivery.id}")
        fresh = [d for d, held in zip(deliveries, check.execute(), strict=True) if not held]
        pipe = self.client.pipeline(transaction=True)
        listed: dict[str, dict[str, float]] = {}
        for d in fresh:
            key = f"{self.base}:d:{d.id}"
            pipe.hset(key, mapping={
                "endpoint_id": d.endpoint_id, "event_id": d.event_id, "type": d.type,
                "body": d.body, "state": d.state.value, "attempts": d.attempts,
                "created_at": d.created_at, "next_at": d.next_at,
            })  # fmt: skip
            pipe.expire(key, KEEP_S)
            listed.setdefault(d.endpoint_id, {})[d.id] = d.created_at
        if fresh:  # one ZADD per key for the group, one trim per endpoint
            pipe.zadd(f"{self.base}:due", {d.id: d.next_at for d in fresh})
            for endpoint_id, members in listed.items():
                pipe.zadd(f"{self.base}:ep:{endpoint_id}", members)
                pipe.zremrangebyrank(f"{self.base}:ep:{endpoint_id}", 0, -MAX_LISTED - 1)
        pipe.execute()
        return len(fresh)

    def _load(self, ids: Sequence[str]) -> list[Delivery]:
        pipe = self.client.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hmget(f"{self.base}:d:{delivery_id}", _FIELDS)
        found = []
        for delivery_id, values in zip(ids, pipe.execute(), strict=True):
            if values[0] is None:
                continue  # expired
            (endpoint_id, event_id, kind, body, state, attempts, created_at, next_at,
             last_error) = (v.decode() if v is not None else "" for v in values)  # fmt: skip
            found.append(Delivery(
                id=delivery_id, endpoint_id=endpoint_id, event_id=event_id, type=kind,
                body=body, state=DeliveryState(state), attempts=int(attempts),
                created_at=float(created_at), next_at=float(next_at), last_error=last_error or None,
            ))  # fmt: skip
        return found

    def claim_due(self, now: float, limit: int) -> list[Delivery]:
        ids = self._claim(keys=[f"{self.base}:due"], args=[now, now + CLAIM_S, limit])
        return self._load([raw.decode() for raw in ids])

    def postpone(self, delivery_ids: Sequence[str], next_at: float) -> None:
        if delivery_ids:
            self.client.zadd(f"{self.base}:due", dict.fromkeys(delivery_ids, next_at), xx=True)

    def settle_many(self, settlements: Sequence[Settlement]) -> None:
        if not settlements:
            return
        due = f"{self.base}:due"
        pipe = self.client.pipeline(transaction=True)
        again: dict[str, float] = {}
        done: list[str] = []
        for s in settlements:
            key = f"{self.base}:d:{s.delivery_id}"
            fields: dict[str, str | float] = {"state": s.state.value, "next_at": s.next_at}
            if s.error is not None:
                fields["last_error"] = s.error
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.hincrby(key, "attempts", 1)
            if s.state is DeliveryState.PENDING:
                again[s.delivery_id] = s.next_at
            else:
                done.append(s.delivery_id)
        if again:
            pipe.zadd(due, again)
        if done:
            pipe.zrem(due, *done)
        pipe.execute()

    def deliveries(
        self, endpoint_id: str, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        ids: list[bytes] = self.client.zrevrange(f"{self.base}:ep:{endpoint_id}", 0, -1)  # type: ignore[assignment]
        found = self._load([raw.decode() for raw in ids])
        return [d for d in found if state is None or d.state is state][:limit]

    def cursor(self) -> str:
        value: bytes | None = self.client.get(f"{self.base}:cursor")  # type: ignore[assignment]
        return value.decode() if value else ""

    def save_cursor(self, cursor: str) -> None:
        self.client.set(f"{self.base}:cursor", cursor)
