"""The distributed broker: Redis, where every state change is one Lua script (``lua/*.lua``).

Keys (all built by :class:`Keys`; ``{prefix}`` is one hash tag, so a Redis Cluster keeps a
whole queue on one slot, and the scripts may build per-message keys from a prefix):

    {p}:m:<id>                   hash: state, lane, tenant, attempts, max_attempts (0: none),
                                 token (the fencing token, never reset), enqueued_at,
                                 updated_at, available_at, expires_at (none before 0.3),
                                 last_error, idem, owner (the last to lease it), batch
    {p}:p:<id>                   string: the payload, stored once, apart from the hash so that
                                 the hash stays small (listpack) and a sent one just drops it
                                 (kept for the retention period with retain_sent_payloads)
    {p}:ready:<lane>             zset: ready since → id (ids are time-ordered: ties are FIFO)
    {p}:delayed                  zset: due → id, for scheduled and retrying messages
    {p}:leased                   zset: lease expiry → id
    {p}:dead                     zset: died at → id
    {p}:final                    zset: finished at → "lane:state:id:tenant" (sent, dead,
                                 cancelled; "lane:state:id" when written before 0.2)
    {p}:counts                   hash: "lane:state" → messages in that state
    {p}:tcounts                  hash: "tenant\\x1flane:state" → that tenant's messages in it
                                 (every script that moves messages gets it as its last key)
    {p}:tready:<tenant>\\x1f<lane> zset: ready since → id, that tenant's part of the lane's
                                 ready zset (its head: the tenant's oldest waiting age); kept
                                 by the scripts' prelude beside {p}:tcounts. Mail made ready
                                 before it existed is in no tenant's zset until it moves.
    {p}:credit                   hash: lane → smooth weighted round robin credit
    {p}:idem:<tenant>\\x1f<key>   string: "id|expires_at", with a Redis TTL of the window
    {p}:lreq:<request id>        string: "id:token,…" a lease handed out, kept as long as the
                                 lease (a repeated lease call returns these)
    {p}:nlease:<name>            string: "holder|expires at", a named lease (one autoscaler)
    {p}:ceremonies               zset: ceremony → id of wedding mail, added at enqueue; the
                                 autoscaler's reads (ceremonies.lua) drop past ceremonies
                                 and the finished messages they come across
    {p}:a:<id>                   list: the message's audit trail, one JSON event each
    {p}:a:idx:<tenant>           zset: accepted at → id, the tenant's trails (export, purge)
    {p}:a:tenants                set: tenants with trails
    {p}:a:feed                   stream: every audit event in the order written (m: id,
                                 e: the event), capped near 1,000,000: what webhooks read
    {p}:r:<recipient hash>       set: ids of the messages naming that address (its keyed
                                 hash, emailq.privacy.erasure), for erasure and access
    {p}:b:<batch id>             zset (all scores 0, so by id: oldest first): the ids of the
                                 messages sent with that batch (emailq.batches); it outlives
                                 its last message's record like a recipient index set

Times are Redis's own clock (``TIME``, read inside each script), so every worker on every
machine shares one clock, whatever its own says; a broker given a clock (tests) passes its
time instead. Epoch seconds in the hashes, whole milliseconds as zset scores (Redis
compares small sorted sets by parsing their scores as text, and integers parse several
times faster than 17-digit fractions).

Finished messages carry a Redis TTL of the retention period, a safety net; ``purge_expired``
deletes them on the broker's clock and keeps ``{p}:counts`` exact, so until it next runs the
counts of sent, dead and cancelled mail include records whose TTL ran out. Call it
periodically: ``{p}:final`` only shrinks when it runs.

Durability is the server's: an acknowledged enqueue survives a crash with ``appendonly yes``
(``appendfsync always``, or ``everysec`` losing up to a second); replication is asynchronous.
Redis must not evict (``maxmemory-policy noeviction``): it is checked at start-up. Redis 7.0
or later: the scripts that free or move memory (lease, heartbeat, settle, reap, promote,
cancel, purge) are flagged ``#!lua flags=allow-oom``, so a full Redis keeps draining while
enqueue is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable, Collection, Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from emailq.broker.base import (
    Action,
    BatchMember,
    Broker,
    BrokerOptions,
    DeadFilter,
    FeedEvent,
    Job,
    MessageInfo,
    NewMessage,
    Outcome,
    State,
    check_lease,
    check_outcomes,
)
from emailq.broker.calls import BrokerCalls
from emailq.broker.redis_client import (
    DEFAULT_PREFIX,
    Keys,
    connect,
    connect_async,
    refused_certificate,
    warn_if_evicting,
    warn_unless_noeviction,
)
from emailq.broker.replica_wait import ReplicaWait, enqueue_replicated, replica_wait
from emailq.clock import Clock
from emailq.errors import BrokerError, BrokerFull, BrokerUnavailable
from emailq.ids import new_id
from emailq.lanes import LANE_ORDER, SHARED_LANES, Lane
from emailq.privacy.audit import AuditEvent, attempt_detail, detail_text, event_from_json
from emailq.privacy.erasure import ErasureCounts

PROMOTE_LIMIT = 1000  # due messages promoted by one lease
DUE_SAMPLE = 20_000  # due messages due_within looks up the lane of (a larger total is split)
PING_TIMEOUT = 2.0  # seconds, to connect and to answer
# check() calls Redis full from this share of maxmemory: a write is refused only once memory
# is past maxmemory, but a batch that did not fit leaves it just below, and the room left is
# the workers' (leasing and settling run at maxmemory; intake should stop first).
FULL_AT = 0.95


def _script(name: str) -> str:
    """A script's text: its shebang line (if any), then the shared prelude, then its body —
    static files put together once at import, never Lua built per call."""
    lua = resources.files("emailq.broker").joinpath("lua")
    body = lua.joinpath(f"{name}.lua").read_text()
    shebang, body = body.split("\n", 1) if body.startswith("#!") else ("", body)
    prelude = lua.joinpath("prelude.lua").read_text()
    return f"{shebang}\n{prelude}{body}" if shebang else prelude + body


_SCRIPTS = {
    name: _script(name)
    for name in (
        "enqueue", "lease", "heartbeat", "settle", "reap", "promote", "cancel",
        "requeue_dead", "purge_expired", "purge_audit", "erase", "swap_payload",
        "due_within", "ceremonies", "hold_lease", "release_lease",
    )
}  # fmt: skip
# settle.lua's sections, in its order
_SETTLE_ORDER = (Action.COMPLETE, Action.RETRY, Action.BURY, Action.RELEASE, Action.DEFER)
_LANE_NAMES = tuple(lane.value for lane in LANE_ORDER)
_LANES = {lane.value.encode(): lane for lane in Lane}
_INFO_FIELDS = (
    "state", "lane", "tenant", "attempts", "max_attempts", "enqueued_at", "updated_at",
    "available_at", "last_error", "idem", "expires_at", "batch",
)  # fmt: skip
_JOB_FIELDS = 10  # per leased message in lease.lua's reply
_COUNTS = tuple(f"{lane.value}:{state.value}" for lane in LANE_ORDER for state in State)


class RedisBroker(Broker):
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        options: BrokerOptions | None = None,
        clock: Clock | None = None,
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        super().__init__(options, clock)
        self.client = client
        self.replica_wait = replica_wait or ReplicaWait()
        self.prefix = prefix
        self.keys = Keys.for_prefix(prefix)
        self._scripts: dict[str, Script] = {
            name: client.register_script(text) for name, text in _SCRIPTS.items()
        }
        # Asked once, without the client's minute of retries: an API started while Redis is
        # down opens its port at once and answers readiness (503, naming Redis). Unanswered
        # now, the policy is read from the first readiness check that reaches Redis.
        self._eviction_policy = warn_unless_noeviction(_AskOnce(self))
        # How to open an asyncio client to the same server (from_url knows the URL); None:
        # the worker's calls go on threads.
        self._async_client: Callable[[], redis.asyncio.Redis | None] = lambda: None

    @classmethod
    def from_url(
        cls, url: str, options: BrokerOptions | None = None, clock: Clock | None = None
    ) -> RedisBroker:
        """``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://h:p[,h:p]/service``;
        ``?prefix=name`` picks the queue (default ``emailq``)."""
        patience_s = (options or BrokerOptions()).patience_s
        client, prefix = connect(url, patience_s)
        broker = cls(client, prefix, options=options, clock=clock, replica_wait=replica_wait(url))
        broker._async_client = lambda: connect_async(url, patience_s)
        return broker

    def calls(self) -> BrokerCalls:
        """Lease, settle and heartbeat on an asyncio client of their own: no thread hop."""
        client = self._async_client()
        return super().calls() if client is None else RedisCalls(self, client)

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[script](keys=keys, args=args)

    def _retention_ms(self) -> int:
        return max(1, round(self.options.retention * 1000))

    def _max_ages(self) -> list[float]:
        return [self.options.max_age[lane] for lane in LANE_ORDER]

    def _tail(self) -> list[str]:
        """The last two keys of every script that changes state: the audit prefix (or its
        "off" stand-in, prelude.lua), then the tenant counts."""
        k = self.keys
        return [k.audit if self.options.audit else k.audit_off, k.tenant_counts]

    def _dead_payload_ms(self) -> int:
        """How long a dead message keeps its payload, in ms; 0: dropped when it dies."""
        keep = self.options.dead_payload_retention
        return self._retention_ms() if keep is None else max(0, round(keep * 1000))

    def _index_ms(self) -> int:
        """A recipient index set outlives its last message's record."""
        longest = max(self.options.max_age.values())
        return max(1, round((longest + self.options.retention) * 1000))

    # -- intake -------------------------------------------------------------------------
    def _enqueue_many(self, messages: Sequence[NewMessage], at: float | None) -> list[str]:
        ttl = self.options.idempotency_ttl
        args: list[Any] = [_time(at), max(1, round(ttl * 1000)), ttl, *_LANE_NAMES]
        args += [*self._max_ages(), self._index_ms()]
        payloads: dict[str, bytes] = {}
        for m in messages:
            message_id = new_id()
            payloads[self.keys.payload + message_id] = m.payload
            args += (message_id, m.lane.value, m.tenant, m.idempotency_key or "",
                     _or_blank(m.send_at), m.max_attempts or 0,
                     _or_blank(m.expires_at), " ".join(m.recipient_hashes),
                     _accepted_members(m) if self.options.audit else "",
                     m.batch_id or "", _or_blank(m.ceremony_at))  # fmt: skip
        k = self.keys
        keys = [k.message, k.idempotency, k.payload, k.delayed, k.counts, *k.ready,
                k.recipients, k.batch, k.ceremonies, *self._tail()]  # fmt: skip
        # One MULTI: payloads by MSET (Lua would copy each twice), then the script. EVAL, not
        # EVALSHA: a NOSCRIPT inside EXEC would leave the MSET applied; the text is small.
        if self.replica_wait.replicas:
            script = (_SCRIPTS["enqueue"], keys, args)
            return _texts(enqueue_replicated(self.client, self.replica_wait, payloads, script))
        pipe = self.client.pipeline(transaction=True)
        pipe.mset(payloads)
        pipe.eval(_SCRIPTS["enqueue"], len(keys), *keys, *args)
        return _texts(pipe.execute()[1])

    # -- workers ------------------------------------------------------------------------
    def _lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        at: float | None,
        lanes: frozenset[Lane],
        request_id: str | None,
    ) -> list[Job]:
        return _jobs(self._run("lease", *self._lease_call(worker, max_n, lease_s, at, lanes,
                                                          request_id)))  # fmt: skip

    def _lease_call(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        at: float | None,
        lanes: frozenset[Lane],
        request_id: str | None,
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        weights = [self.options.lane_weights[lane] for lane in SHARED_LANES]
        mask = "".join("1" if lane in lanes else "0" for lane in LANE_ORDER)
        keys = [k.message, k.payload, k.delayed, k.leased, k.counts, k.credit, k.dead, k.final]
        # With an id of its own, a call that redis-py sends again (its reply was lost to a
        # ConnectionError) returns the jobs of the first instead of leasing more.
        request = k.lease_request + (request_id or uuid.uuid4().hex)
        args = [_time(at), lease_s, worker, max_n, PROMOTE_LIMIT, *_LANE_NAMES, *weights, mask,
                self._retention_ms(), self._dead_payload_ms()]  # fmt: skip
        return [*keys, *k.ready, request, *self._tail()], args

    def _heartbeat(self, jobs: Sequence[Job], lease_s: float, at: float | None) -> list[str]:
        return _texts(self._run("heartbeat", *self._heartbeat_call(jobs, lease_s, at)))

    def _heartbeat_call(
        self, jobs: Sequence[Job], lease_s: float, at: float | None
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [_time(at), lease_s]
        for job in jobs:
            args += (job.id, job.token)
        return [self.keys.message, self.keys.leased], args

    def _settle(self, outcomes: Sequence[Outcome], at: float | None) -> list[str]:
        return _texts(self._run("settle", *self._settle_call(outcomes, at)))

    def _settle_call(
        self, outcomes: Sequence[Outcome], at: float | None
    ) -> tuple[list[str], list[Any]]:
        by_action: dict[Action, list[Outcome]] = {action: [] for action in _SETTLE_ORDER}
        for outcome in outcomes:
            by_action[outcome.action].append(outcome)
        args: list[Any] = [_time(at), self._retention_ms(), *_LANE_NAMES]
        args += [len(by_action[action]) for action in _SETTLE_ORDER]
        args.append("1" if self.options.retain_sent_payloads else "")
        args.append(self._dead_payload_ms())
        attempt = _attempt_members if self.options.audit else _no_members
        for o in by_action[Action.COMPLETE]:
            args += (o.job.id, o.job.token, o.error or "", attempt(o))
        for o in by_action[Action.RETRY]:
            args += (o.job.id, o.job.token, o.delay, o.error or "", " ".join(o.recipients or ()),
                     attempt(o))  # fmt: skip
        for o in by_action[Action.BURY]:
            args += (o.job.id, o.job.token, o.error or "", attempt(o))
        for o in by_action[Action.RELEASE]:
            args += (o.job.id, o.job.token)
        for o in by_action[Action.DEFER]:
            args += (o.job.id, o.job.token, o.delay, o.error or "")
        k = self.keys
        keys = [k.message, k.payload, k.leased, k.delayed, k.counts, k.final, k.dead, *k.ready,
                *self._tail()]  # fmt: skip
        return keys, args

    # -- housekeeping -------------------------------------------------------------------
    def _reap_expired(self, at: float | None, limit: int) -> int:
        k = self.keys
        keys = [k.message, k.payload, k.leased, k.counts, k.final, k.dead, *k.ready,
                *self._tail()]  # fmt: skip
        args = [_time(at), limit, self._retention_ms(), *_LANE_NAMES, self._dead_payload_ms()]
        return int(self._run("reap", keys, args))

    def _promote_due(self, at: float | None, limit: int) -> int:
        k = self.keys
        keys = [k.message, k.delayed, k.counts, *k.ready, k.tenant_counts]
        return int(self._run("promote", keys, [_time(at), limit, *_LANE_NAMES]))

    def _requeue_dead(
        self, ids: Sequence[str] | None, only: DeadFilter, limit: int, at: float | None
    ) -> int:
        k = self.keys
        keys = [k.message, k.payload, k.dead, k.counts, k.final, *k.ready, *self._tail()]
        mode = "all" if ids is None else "ids"
        args = [_time(at), limit, mode, *_LANE_NAMES, *self._max_ages(), _or_blank(only.since),
                only.lane.value if only.lane else "", only.tenant or "", *(ids or ())]  # fmt: skip
        return int(self._run("requeue_dead", keys, args))

    def _cancel(self, message_id: str, at: float | None) -> bool:
        k = self.keys
        keys = [k.message, k.payload, k.delayed, k.counts, k.final, *k.ready, *self._tail()]
        args = [_time(at), message_id, self._retention_ms(), *_LANE_NAMES]
        return bool(self._run("cancel", keys, args))

    def _purge_expired(self, at: float | None, limit: int) -> int:
        k = self.keys
        keys = [k.message, k.payload, k.final, k.dead, k.counts, k.tenant_counts]
        args = [_time(at), limit, self.options.retention]
        return int(self._run("purge_expired", keys, args))

    def _purge_audit(self, at: float | None, limit: int) -> int:
        args = [_time(at), limit, self.options.audit_retention]
        removed = int(self._run("purge_audit", [self.keys.audit], args))
        # The feed's entries are named by Redis's clock in ms: those past the trail's
        # retention go with it (the cap alone would keep them at a low volume).
        now = self._now() if at is None else at
        oldest = round((now - self.options.audit_retention) * 1000)
        self.client.xtrim(f"{self.keys.audit}feed", minid=max(0, oldest), approximate=True)
        return removed

    def _purge_preview(self, at: float | None) -> dict[str, int]:
        now = self._now() if at is None else at
        cutoff = f"({round((now - self.options.retention) * 1000)}"
        records = int(self.client.zcount(self.keys.final, "-inf", cutoff))
        audit_cutoff = f"({round((now - self.options.audit_retention) * 1000)}"
        trails = sum(
            int(self.client.zcount(self._audit_index(tenant.decode()), "-inf", audit_cutoff))
            for tenant in self._audit_tenants()
        )
        # Dead payloads carry a Redis TTL of their own: Redis drops them, nothing to count.
        return {"records": records, "audit_trails": trails}

    def _stored_payloads(self, cursor: str, count: int) -> tuple[str, list[tuple[str, bytes]]]:
        reply: Any = self.client.scan(int(cursor or 0), match=f"{self.keys.payload}*", count=count)
        position, names = reply
        values: list[Any] = self.client.mget(names) if names else []
        start = len(self.keys.payload)
        stored = [(n.decode()[start:], v) for n, v in zip(names, values, strict=True) if v]
        return ("" if position == 0 else str(position)), stored

    def _swap_payload(self, message_id: str, old: bytes, new: bytes) -> bool:
        key = self.keys.payload + message_id
        return bool(self._run("swap_payload", [key], [old, new]))

    # -- the audit trail and erasure ------------------------------------------------------
    def _audit_index(self, tenant: str) -> str:
        return f"{self.keys.audit}idx:{tenant}"

    def _audit_tenants(self) -> list[bytes]:
        return list(self.client.smembers(f"{self.keys.audit}tenants"))  # type: ignore[arg-type]

    def _events(self, message_id: str) -> list[AuditEvent]:
        lines: list[bytes] = self.client.lrange(self.keys.audit + message_id, 0, -1)  # type: ignore[assignment]
        return [event_from_json(message_id, line) for line in lines]

    def _tenant_events(
        self, tenant: str, since: float, until: float, limit: int
    ) -> list[AuditEvent]:
        """Trails are indexed by acceptance: those of messages accepted up to the longest
        lane age before ``since`` may hold events in range (mail requeued later than that
        is missed; the index keeps its acceptance)."""
        lookback = max(self.options.max_age.values())
        low, high = round((since - lookback) * 1000), f"({round(until * 1000)}"
        ids: list[bytes] = self.client.zrangebyscore(self._audit_index(tenant), low, high)  # type: ignore[assignment]
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.lrange(self.keys.audit + message_id.decode(), 0, -1)
        found: list[AuditEvent] = []
        for message_id, lines in zip(ids, pipe.execute(), strict=True):
            events = [event_from_json(message_id.decode(), line) for line in lines]
            found += [e for e in events if since <= e.at < until]
        found.sort(key=lambda e: e.at)
        return found[:limit]

    def _events_after(self, cursor: str, limit: int) -> list[FeedEvent]:
        """From the feed stream every script's audit() appends to (prelude.lua)."""
        start = f"({cursor}" if cursor else "-"
        entries: list[Any] = self.client.xrange(f"{self.keys.audit}feed", start, "+", count=limit)  # type: ignore[assignment]
        pipe = self.client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.hmget(self.keys.message + fields[b"m"].decode(), ("tenant", "batch"))
        owners = pipe.execute() if entries else []
        found = []
        for (entry_id, fields), (tenant, batch) in zip(entries, owners, strict=True):
            if tenant is None:
                continue  # purged since
            found.append(FeedEvent(
                cursor=entry_id.decode(), tenant=tenant.decode(),
                batch_id=batch.decode() if batch is not None else None,
                event=event_from_json(fields[b"m"].decode(), fields[b"e"]),
            ))  # fmt: skip
        return found

    def _find_recipient(self, recipient_hash: str, tenant: str | None) -> list[MessageInfo]:
        ids: set[bytes] = self.client.smembers(self.keys.recipients + recipient_hash)  # type: ignore[assignment]
        found = [info for i in sorted(ids) if (info := self._get(i.decode())) is not None]
        return [info for info in found if tenant is None or info.tenant == tenant]

    def _erase_recipient(
        self, recipient_hash: str, tenant: str | None, at: float | None
    ) -> ErasureCounts:
        k = self.keys
        keys = [k.message, k.payload, k.idempotency, k.delayed, k.counts, k.final, *k.ready,
                k.recipients + recipient_hash, *self._tail()]  # fmt: skip
        args = [_time(at), recipient_hash, tenant or "", self._retention_ms(), *_LANE_NAMES]
        return ErasureCounts(*(int(n) for n in self._run("erase", keys, args)))

    # -- reads --------------------------------------------------------------------------
    def _get(self, message_id: str) -> MessageInfo | None:
        values: list[Any] = self.client.hmget(self.keys.message + message_id, _INFO_FIELDS)
        return _info(message_id, values)

    def _batch_members(self, batch_id: str) -> list[BatchMember]:
        ids: list[bytes] = self.client.zrange(self.keys.batch + batch_id, 0, -1)  # type: ignore[assignment]
        pipe = self.client.pipeline(transaction=False)
        for raw in ids:
            pipe.hmget(self.keys.message + raw.decode(), _INFO_FIELDS)
            pipe.get(self.keys.payload + raw.decode())
        replies = pipe.execute()
        members = []
        for index, raw in enumerate(ids):
            info = _info(raw.decode(), replies[2 * index])
            if info is not None:  # purged: its id stays in the set until the set expires
                members.append(BatchMember(info=info, payload=replies[2 * index + 1] or None))
        return members

    def _stats(
        self, at: float | None, tenant: str | None
    ) -> tuple[dict[tuple[Lane, State], int], dict[Lane, float], float]:
        pipe = self.client.pipeline(transaction=False)
        if tenant is None:
            pipe.hgetall(self.keys.counts)
        else:  # the tenant's lanes × states, one HMGET: no scan of its messages
            pipe.hmget(self.keys.tenant_counts, [f"{tenant}\x1f{field}" for field in _COUNTS])
        for key, lane in zip(self.keys.ready, LANE_ORDER, strict=True):
            if tenant is not None:  # the head of the tenant's own part of the lane
                key = f"{self.keys.tenant_ready}{tenant}\x1f{lane.value}"
            pipe.zrange(key, 0, 0, withscores=True)
        if at is None:
            pipe.time()
        replies = pipe.execute()
        if at is None:
            seconds, micros = replies.pop()
            at = seconds + micros / 1_000_000
        raw_counts, *heads = replies
        if tenant is not None:
            raw_counts = {f.encode(): v for f, v in zip(_COUNTS, raw_counts, strict=True) if v}
        counts: dict[tuple[Lane, State], int] = {}
        for field, value in raw_counts.items():
            lane, state = field.decode().split(":")
            counts[Lane(lane), State(state)] = int(value)
        oldest = {
            lane: head[0][1] / 1000 for lane, head in zip(LANE_ORDER, heads, strict=True) if head
        }
        return counts, oldest, at

    def _due_within(self, seconds: float, at: float | None) -> dict[Lane, int]:
        keys = [self.keys.message, self.keys.delayed]
        total, looked_up, *pairs = self._run("due_within", keys, [_time(at), seconds, DUE_SAMPLE])
        scale = total / looked_up if looked_up else 0.0
        lanes = zip(pairs[::2], pairs[1::2], strict=True)
        return {_LANES[lane]: round(int(n) * scale) for lane, n in lanes}

    def _ceremonies(self, within_s: float, limit: int, at: float | None) -> list[tuple[float, int]]:
        keys = [self.keys.message, self.keys.ceremonies]
        reply = self._run("ceremonies", keys, [_time(at), within_s, limit])
        pairs = zip(reply[::2], reply[1::2], strict=True)
        return [(int(ms) / 1000, int(n)) for ms, n in pairs]

    def _hold_lease(self, name: str, holder: str, ttl_s: float, at: float | None) -> bool:
        key = self.keys.named_lease + name
        return bool(self._run("hold_lease", [key], [_time(at), holder, ttl_s]))

    def _release_lease(self, name: str, holder: str) -> None:
        self._run("release_lease", [self.keys.named_lease + name], [holder])

    def _now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds + micros / 1_000_000)

    def _translate(self, error: Exception) -> BrokerError | None:
        if not isinstance(error, redis.RedisError):
            return None
        text = str(error)
        if isinstance(error, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
            # a write refused at maxmemory (a script's and a pipeline's error say it in words)
            return BrokerFull(f"Redis is full (maxmemory) and refuses writes: {text}")
        unreachable = (
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError,
        )  # fmt: skip
        if refused_certificate(error):
            return BrokerUnavailable(
                f"Redis TLS certificate refused: {text} (check ssl_ca_certs, or ssl_certfile"
                " and ssl_keyfile, on the rediss:// URL)"
            )
        if isinstance(error, unreachable):
            return BrokerUnavailable(f"Redis is unavailable: {text}")
        return BrokerError(f"Redis: {text}")

    def _ping(self) -> bool:
        try:
            return self._ask_once("PING") in (b"PONG", True)
        except redis.RedisError:
            return False

    def _check(self) -> str | None:
        try:
            info = _info_fields(self._ask_once("INFO", "memory", "replication"))
        except redis.RedisError as error:
            return f"unreachable: {error}"
        if self._eviction_policy is None and "maxmemory_policy" in info:
            self._eviction_policy = info["maxmemory_policy"]
            warn_if_evicting(self._eviction_policy)
        if info.get("role") == "slave":
            return "read-only: connected to a replica, not the master"
        limit = int(info.get("maxmemory", 0))
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        if limit and used >= FULL_AT * limit:
            share = "" if used >= limit else f"{FULL_AT:.0%} of "
            return f"full: Redis used_memory {_mb(used)} ≥ {share}maxmemory {_mb(limit)}"
        return None

    def _ask_once(self, *command: str) -> Any:
        """One command on a connection of its own, without the client's retry budget (about
        a minute of reconnecting through a failover): a readiness probe wants to know now.
        Built from the pool's settings, not by the pool, which would count it against its
        cap."""
        pool = self.client.connection_pool
        once = {"retry": Retry(NoBackoff(), 0), "socket_timeout": PING_TIMEOUT,
                "socket_connect_timeout": PING_TIMEOUT}  # fmt: skip
        connection: Any = None  # redis-py's connection classes are untyped
        try:
            connection = pool.connection_class(**pool.connection_kwargs | once)
            connection.send_command(*command)
            return connection.read_response()
        finally:
            if connection is not None:
                connection.disconnect()

    def purge(self) -> None:
        """Delete every key under this queue's prefix (its rate limits and API keys too)."""
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.keys.tag}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def close(self) -> None:
        self.client.close()


class _AskOnce:
    """``config_get`` by :meth:`RedisBroker._ask_once`: one try, no retry budget."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def config_get(self, name: str) -> dict[bytes, bytes]:
        reply = self.broker._ask_once("CONFIG", "GET", name)
        if isinstance(reply, dict):  # hiredis answers a map; the Python parser, pairs
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))


def _info(message_id: str, values: Sequence[Any]) -> MessageInfo | None:
    """A message's record from its hash's _INFO_FIELDS; None when it is gone."""
    if values[0] is None:
        return None
    (state, lane, tenant, attempts, max_attempts, enqueued, updated, available, error, idem,
     expires, batch) = values  # fmt: skip
    return MessageInfo(
        id=message_id,
        state=State(state.decode()),
        lane=_LANES[lane],
        tenant=tenant.decode(),
        attempts=int(attempts),
        max_attempts=int(max_attempts) or None,
        expires_at=math.inf if expires is None else float(expires),
        enqueued_at=float(enqueued),
        updated_at=float(updated),
        available_at=float(available),
        last_error=error.decode() if error is not None else None,
        idempotency_key=idem.decode() if idem is not None else None,
        batch_id=batch.decode() if batch is not None else None,
    )


def _jobs(reply: Any) -> list[Job]:
    """lease.lua's reply: _JOB_FIELDS values per leased message."""
    return [_job(reply[i : i + _JOB_FIELDS]) for i in range(0, len(reply), _JOB_FIELDS)]


def _job(fields: Sequence[Any]) -> Job:
    message_id, token, lane, payload, attempts, max_attempts, enqueued_at, tenant, expires, rcpt = (
        fields
    )
    return Job(
        id=message_id.decode(),
        token=token,
        lane=_LANES[lane],
        payload=payload,
        attempts=attempts,
        max_attempts=max_attempts or None,
        enqueued_at=float(enqueued_at),
        tenant=tenant.decode(),
        expires_at=math.inf if expires is None else float(expires),
        recipients=tuple(rcpt.decode().split()) if rcpt else None,
    )


def _accepted_members(message: NewMessage) -> str:
    """The accepted event's members after its time and kind (enqueue.lua adds those)."""
    detail = detail_text(tenant=message.tenant, lane=message.lane.value,
                         rcpt=list(message.recipient_hashes) or None,
                         **dict(message.origin or {}))  # fmt: skip
    return _members(detail)


def _attempt_members(outcome: Outcome) -> str:
    return _members(attempt_detail(outcome))


def _no_members(outcome: Outcome) -> str:
    return ""


def _members(detail: str) -> str:
    """'{"a":1,"b":2}' → ',"a":1,"b":2': members to splice into an event (prelude.lua)."""
    return "," + detail[1:-1] if len(detail) > 2 else ""


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _info_fields(reply: Any) -> dict[str, str]:
    """INFO's "name:value" lines (the raw reply: the connection does not parse it)."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    pairs = (line.partition(":") for line in text.splitlines() if not line.startswith("#"))
    return {name: value for name, sep, value in pairs if sep}


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


def _time(at: float | None) -> float | str:
    """A script's ARGV[1]: the injected clock's time, or "" for Redis's own (``TIME``)."""
    return "" if at is None else at


def _texts(values: Sequence[bytes]) -> list[str]:
    return [value.decode() for value in values]


class RedisCalls(BrokerCalls):
    """The worker's lease, settle and heartbeat scripts on an asyncio client: the same scripts and
    arguments as the broker's own methods, sent from the event loop."""

    def __init__(self, broker: RedisBroker, client: redis.asyncio.Redis) -> None:
        super().__init__(broker)
        self.redis = broker
        self.client = client
        self._wake: redis.asyncio.client.PubSub | None = None
        self._scripts = {
            name: client.register_script(_SCRIPTS[name])
            for name in ("lease", "settle", "heartbeat")
        }

    async def lease(
        self,
        worker: str,
        max_n: int,
        lease_s: float,
        lanes: Collection[Lane] | None = None,
        *,
        request_id: str | None = None,
    ) -> list[Job]:
        chosen = check_lease(max_n, lease_s, lanes, request_id)
        keys, args = self.redis._lease_call(
            worker, max_n, lease_s, self.redis._at(), chosen, request_id
        )
        with self.redis._backend_errors():
            reply = await self._scripts["lease"](keys=keys, args=args)
        return self.redis._open_all(_jobs(reply))

    async def settle(self, outcomes: Sequence[Outcome]) -> list[str]:
        check_outcomes(outcomes)
        if not outcomes:
            return []
        keys, args = self.redis._settle_call(outcomes, self.redis._at())
        with self.redis._backend_errors():
            return _texts(await self._scripts["settle"](keys=keys, args=args))

    async def heartbeat(self, jobs: Sequence[Job], lease_s: float) -> list[str]:
        if not jobs:
            return []
        keys, args = self.redis._heartbeat_call(jobs, lease_s, self.redis._at())
        with self.redis._backend_errors():
            return _texts(await self._scripts["heartbeat"](keys=keys, args=args))

    async def wait_for_critical(self, timeout: float) -> None:
        try:
            if self._wake is None:
                self._wake = self.client.pubsub()
                await self._wake.subscribe(self.redis.keys.wake)
            # Any message (or the subscription's own confirmation) ends the wait early.
            await self._wake.get_message(timeout=timeout)
        except redis.RedisError:  # no notice to be had: the poll carries on alone
            await self._close_wake()
            await asyncio.sleep(timeout)

    async def _close_wake(self) -> None:
        """Give the subscription's connection back (a broken one is subscribed again on the
        next wait)."""
        wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await wake.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self._close_wake()
        await self.client.aclose()
