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

# One script per group, not a command per delivery: redis-py's packing and parsing of
# each command was most of the webhook process's Redis cost. Delivery hashes are named
# from ARGV[1] (the "{p}:wh:d:" prefix; the hash tag keeps them in the due zset's slot).

# KEYS[1] due zset; ARGV[1] hash prefix, ARGV[2] now, ARGV[3] held until, ARGV[4] limit.
# Claims due deliveries (moved to ARGV[3] in the same call: no other sender can take
# them meanwhile) and returns {id, fields…} for each; one whose hash has expired is
# dropped from the zset.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
local out = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'endpoint_id', 'event_id', 'type',
    'body', 'state', 'attempts', 'created_at', 'next_at', 'last_error')
  if fields[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    out[#out + 1] = id
    out[#out + 1] = fields
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
# KEYS[1] due zset; ARGV[1] hash prefix, then per attempt: id, state, next_at, error
# ("" for none). An attempt's record that has expired meanwhile is not recreated.
_SETTLE = """
for i = 2, #ARGV, 4 do
  local id, state, next_at, error = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'state', state, 'next_at', next_at)
    if error ~= '' then redis.call('HSET', key, 'last_error', error) end
    redis.call('HINCRBY', key, 'attempts', 1)
  end
  if state == 'pending' then
    redis.call('ZADD', KEYS[1], next_at, id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return 0
"""
# KEYS[1] due zset; ARGV[1] hash prefix, ARGV[2] "{p}:wh:ep:" prefix, ARGV[3] KEEP_S,
# ARGV[4] MAX_LISTED, then per delivery: id, endpoint_id, event_id, type, body, state,
# attempts, created_at, next_at. Stores those not stored already; returns how many.
_ADD = """
local stored, listed = 0, {}
for i = 5, #ARGV, 9 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'endpoint_id', ARGV[i + 1], 'event_id', ARGV[i + 2],
      'type', ARGV[i + 3], 'body', ARGV[i + 4], 'state', ARGV[i + 5],
      'attempts', ARGV[i + 6], 'created_at', ARGV[i + 7], 'next_at', ARGV[i + 8])
    redis.call('EXPIRE', key, ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[i + 8], id)
    redis.call('ZADD', ARGV[2] .. ARGV[i + 1], ARGV[i + 7], id)
    listed[ARGV[i + 1]] = true
    stored = stored + 1
  end
end
for endpoint_id in pairs(listed) do
  redis.call('ZREMRANGEBYRANK', ARGV[2] .. endpoint_id, 0, -tonumber(ARGV[4]) - 1)
end
return stored
"""
_FIELDS = ("endpoint_id", "event_id", "type", "body", "state", "attempts", "created_at",
           "next_at", "last_error")  # fmt: skip


class RedisWebhookStore(WebhookStore):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.base = f"{{{prefix}}}:wh"
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._add = client.register_script(_ADD)

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
        args: list[str | int | float] = [f"{self.base}:d:", f"{self.base}:ep:", KEEP_S, MAX_LISTED]
        for d in deliveries:
            args += [d.id, d.endpoint_id, d.event_id, d.type, d.body, d.state.value,
                     d.attempts, repr(d.created_at), repr(d.next_at)]  # fmt: skip
        return int(self._add(keys=[f"{self.base}:due"], args=args))

    def _load(self, ids: Sequence[str]) -> list[Delivery]:
        pipe = self.client.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hmget(f"{self.base}:d:{delivery_id}", _FIELDS)
        return [
            delivery
            for delivery_id, values in zip(ids, pipe.execute(), strict=True)
            if (delivery := _delivery(delivery_id, values)) is not None
        ]

    def claim_due(self, now: float, limit: int) -> list[Delivery]:
        args: list[str | float] = [f"{self.base}:d:", now, now + CLAIM_S, limit]
        flat = self._claim(keys=[f"{self.base}:due"], args=args)
        found = (_delivery(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2))
        return [delivery for delivery in found if delivery is not None]

    def postpone(self, delivery_ids: Sequence[str], next_at: float) -> None:
        if delivery_ids:
            self.client.zadd(f"{self.base}:due", dict.fromkeys(delivery_ids, next_at), xx=True)

    def settle_many(self, settlements: Sequence[Settlement]) -> None:
        if not settlements:
            return
        args: list[str | float] = [f"{self.base}:d:"]
        for st in settlements:
            args += [st.delivery_id, st.state.value, repr(st.next_at), st.error or ""]
        self._settle(keys=[f"{self.base}:due"], args=args)

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


def _delivery(delivery_id: str, values: Sequence[bytes | None]) -> Delivery | None:
    """From a delivery hash's :data:`_FIELDS`; None when it has expired."""
    if not values or values[0] is None:
        return None
    (endpoint_id, event_id, kind, body, state, attempts, created_at, next_at,
     last_error) = (v.decode() if v is not None else "" for v in values)  # fmt: skip
    return Delivery(
        id=delivery_id, endpoint_id=endpoint_id, event_id=event_id, type=kind, body=body,
        state=DeliveryState(state), attempts=int(attempts), created_at=float(created_at),
        next_at=float(next_at), last_error=last_error or None,
    )  # fmt: skip
