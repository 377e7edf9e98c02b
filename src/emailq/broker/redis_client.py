"""Connecting to Redis: the client's behaviour, broker URLs (Sentinel too), the key names.

Every Redis connection of a queue is made here (:func:`connect`) with one retry budget
that outlasts a Sentinel failover, and every key name of a queue comes from :class:`Keys`.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from emailq.broker.replica_wait import ReplicaWait
from emailq.errors import ConfigurationError
from emailq.lanes import LANE_ORDER

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "emailq"
SENTINEL_PORT = 26379
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # no braces (the hash tag), no glob characters


def client_options(
    patience_s: float = 60.0,
    retry_class: type[_FailoverRetry] | type[_AsyncFailoverRetry] | None = None,
) -> dict[str, Any]:
    """How every connection behaves; by default the retry budget outlasts a Sentinel failover.

    About ``patience_s`` of reconnecting (0.2, 0.4, 0.8, 1.6 s, then every 2 s): a worker
    waits a failover out (a minute) instead of failing its batch, while the API, whose
    caller would rather hear 503 + Retry-After, waits a few seconds. A script that raised
    ConnectionError may have run: every script is idempotent by message id and lease token,
    so the retry is safe. A demoted master answers READONLY: that reconnects and retries too.
    ``retry_class``: redis-py's asyncio client takes a Retry of its own (connect_async).
    """
    retry = (retry_class or _FailoverRetry)(
        ExponentialBackoff(cap=2.0, base=0.1),
        retries=_retries_within(patience_s),
        supported_errors=(
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,
        ),
    )
    return {
        "decode_responses": False,  # payloads are bytes
        "retry": retry,
        "socket_timeout": 10.0,  # a silent network partition fails over instead of hanging
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,  # a connection idle that long is pinged before use
    }


class _FailoverRetry(Retry):
    """Rides out what a failover throws, but not a certificate either side refuses: that
    is configuration, not going away, and a minute of reconnecting would look like a hang."""

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        return super().call_with_retry(do, fail, _unless_refused(is_retryable), with_failure_count)


class _AsyncFailoverRetry(AsyncRetry):
    """_FailoverRetry for the asyncio client (connect_async)."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[Any]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        retryable = _unless_refused(is_retryable)
        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _unless_refused(
    is_retryable: Callable[[Exception], bool] | None,
) -> Callable[[Exception], bool]:
    """What redis-py would retry, less a refused certificate."""

    def retryable(error: Exception) -> bool:
        if refused_certificate(error):
            return False
        return is_retryable is None or is_retryable(error)

    return retryable


def refused_certificate(error: BaseException) -> bool:
    """Did a TLS handshake fail over a certificate (ours or the server's)? redis-py raises
    its own ConnectionError with the ssl error as the context."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and any(
            word in str(seen.reason or "") for word in ("CERTIFICATE", "UNKNOWN_CA")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retries_within(patience_s: float) -> int:
    """How many retries of the backoff above (0.2, 0.4, 0.8, 1.6, then 2 s each) fit."""
    retries, waited, delay = 0, 0.0, 0.2
    while waited + delay <= patience_s:
        waited += delay
        retries += 1
        delay = min(2.0, delay * 2)
    return max(1, retries)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key name of one queue, in one place."""

    tag: str
    message: str  # + id
    payload: str  # + id
    idempotency: str  # + tenant, US (0x1f), key
    lease_request: str  # + request id
    delayed: str
    leased: str
    dead: str
    final: str
    counts: str
    tenant_counts: str  # "tenant\x1flane:state" → n: a tenant's counts without a scan
    tenant_ready: str  # + tenant, US, lane: that tenant's ready mail in the lane (prelude.lua)
    credit: str
    ready: tuple[str, ...]  # one per lane, in LANE_ORDER
    named_lease: str  # + name: "holder|expires at" (one autoscaler per queue)
    audit: str  # + id: a message's audit trail (a list); "idx:" + tenant, "tenants": its index
    audit_off: str  # given to the scripts instead of ``audit`` when no trail is written
    recipients: str  # + a recipient's keyed hash: the ids of the messages naming it
    batch: str  # + a batch id: the ids of its messages (a zset by id: oldest first)
    wake: str  # pub/sub channel: critical mail ready now (enqueue.lua publishes)
    ceremonies: str  # zset: ceremony (ms) → id of wedding mail (the autoscaler's look-ahead)

    @classmethod
    def for_prefix(cls, prefix: str) -> Keys:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(f"a queue prefix is 1-100 of A-Z a-z 0-9 _ . -: {prefix!r}")
        tag = f"{{{prefix}}}"
        return cls(
            tag=tag,
            message=f"{tag}:m:",
            payload=f"{tag}:p:",
            idempotency=f"{tag}:idem:",
            lease_request=f"{tag}:lreq:",
            delayed=f"{tag}:delayed",
            leased=f"{tag}:leased",
            dead=f"{tag}:dead",
            final=f"{tag}:final",
            counts=f"{tag}:counts",
            tenant_counts=f"{tag}:tcounts",
            tenant_ready=f"{tag}:tready:",
            credit=f"{tag}:credit",
            ready=tuple(f"{tag}:ready:{lane.value}" for lane in LANE_ORDER),
            named_lease=f"{tag}:nlease:",
            audit=f"{tag}:a:",
            audit_off=f"{tag}:a-off",
            recipients=f"{tag}:r:",
            batch=f"{tag}:b:",
            wake=f"{tag}:wake",
            ceremonies=f"{tag}:ceremonies",
        )


class ConfigReader(Protocol):
    """What reads a Redis setting: a client, or a one-shot connection."""

    def config_get(self, name: str) -> Any: ...


def warn_unless_noeviction(client: ConfigReader) -> str | None:
    """Warn unless Redis refuses writes when full (``noeviction``) instead of evicting queued
    mail; returns the policy, or None when it cannot be read (CONFIG may be disabled)."""
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.RedisError as error:
        log.info("could not read maxmemory-policy (%s); it must be noeviction", error)
        return None
    values = [_text(value) for value in reply.values()]
    policy = values[0] if values else None
    warn_if_evicting(policy)
    return policy


def warn_if_evicting(policy: str | None) -> None:
    if policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s: a full Redis may evict queued mail; set it to"
            " noeviction",
            policy,
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, patience_s: float = 60.0) -> tuple[redis.Redis, str]:
    """A client for a broker URL, and the queue prefix its ``?prefix=`` names;
    ``patience_s``: how long a call rides out an unreachable server (:func:`client_options`)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[-1]
    Keys.for_prefix(prefix)  # refuse a bad prefix before connecting
    ReplicaWait.pop_from(query)  # the broker's, not redis-py's
    if parts.scheme == "redis+sentinel":
        return _sentinel_client(parts.netloc, parts.path, query, patience_s), prefix
    client = redis.Redis.from_url(_plain(url, parts.scheme, query), **client_options(patience_s))
    return client, prefix


def connect_async(url: str, patience_s: float = 60.0) -> redis.asyncio.Redis | None:
    """An asyncio client for the same server as :func:`connect`'s, for a worker's hot calls
    (emailq.broker.calls); None for a Sentinel URL, whose calls stay on threads: the sync
    client's master lookup is the one proven through failovers (tests/test_redis_broker.py)."""
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        return None
    query = parse_qs(parts.query, keep_blank_values=True)
    query.pop("prefix", None)
    ReplicaWait.pop_from(query)  # the broker's, not redis-py's
    options = client_options(patience_s, retry_class=_AsyncFailoverRetry)
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        _plain(url, parts.scheme, query), **options
    )
    # redis-py's asyncio connections pack commands in Python, about 5 µs an argument (a
    # settle has dozens); its sync ones use hiredis's C packer: the asyncio ones do too.
    pool = client.connection_pool
    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return client


class _HiredisPacking:
    """pack_command by hiredis, as redis-py's sync connections do (HiredisRespSerializer)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = HiredisRespSerializer().pack(*args)
        return packed


def _plain(url: str, scheme: str, query: dict[str, list[str]]) -> str:
    """The URL redis-py is given: without the options that are emailq's own."""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"not a Redis URL: {url}")
    rest = urlencode(query, doseq=True)  # redis-py refuses options it does not know
    return url.partition("?")[0] + (f"?{rest}" if rest else "")


def _sentinel_client(
    netloc: str, path: str, query: dict[str, list[str]], patience_s: float
) -> redis.Redis:
    """``redis+sentinel://[user:password@]host:port[,host:port]/service_name[?db=N]``.

    The credentials are the master's; Sentinel finds the master again after a failover.
    """
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    service = path.strip("/")
    db = query.pop("db", ["0"])[-1]
    if not service or not hosts or query or not db.isdigit():
        raise ConfigurationError(
            "a Sentinel URL looks like redis+sentinel://host:port[,host:port]/service_name"
            "[?db=N&prefix=name&wait=N]"
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [_host_port(item) for item in hosts.split(",")],
        sentinel_kwargs={"socket_timeout": 2.0, "socket_connect_timeout": 2.0},
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service,
        db=int(db),
        connection_class=_SentinelMasterConnection,
        username=unquote(username) or None,
        password=unquote(password) or None,
        **client_options(patience_s),
    )
    return client


class _SentinelMasterConnection(SentinelManagedConnection):
    """Asks Sentinel where the master is at every connect, the retries' included.

    redis-py reconnects a dropped Sentinel connection to the address it had, so after a
    failover it would knock on the dead master until the retry budget runs out
    (redis/redis-py#3874; tests/test_redis_broker.py kills a master to check this).
    """

    def _connect(self) -> socket.socket:
        self.host, self.port = self.connection_pool.get_master_address()
        sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        return sock


def _host_port(item: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon or "]" in port:  # no port given ("[::1]" has colons of its own)
        return item.strip("[]"), SENTINEL_PORT
    if not port.isdigit():
        raise ConfigurationError(f"a Sentinel address is host:port: {item!r}")
    return host.strip("[]"), int(port)
