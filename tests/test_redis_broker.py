"""What only the Redis broker has: key layout, script reloading, re-runs, Lua lane sharing."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from conftest import REDIS_URL, require_redis
from deployments import deployment_for
from emailq.broker import Action, BrokerOptions, NewMessage, Outcome, State, redis_client
from emailq.broker import redis as redis_broker
from emailq.broker.expiry import gave_up
from emailq.broker.redis import RedisBroker, RedisCalls
from emailq.broker.redis_client import connect, warn_unless_noeviction
from emailq.clock import ManualClock
from emailq.errors import BrokerFull, ConfigurationError
from emailq.lanes import LANE_ORDER, SHARED_LANES, Lane
from emailq.scheduling import allot

PAYLOAD = b"\x00\xff payload \r\n" * 100


def open_test_broker(clock: ManualClock, options: BrokerOptions | None = None) -> RedisBroker:
    require_redis()
    prefix = f"emailq-test-{uuid.uuid4().hex}"
    return RedisBroker.from_url(f"{REDIS_URL}?prefix={prefix}", options=options, clock=clock)


@pytest.fixture
def redis_up() -> None:
    require_redis()


@pytest.fixture
def broker(clock: ManualClock) -> Iterator[RedisBroker]:
    opened = open_test_broker(clock)
    yield opened
    opened.purge()
    opened.close()


def keys_of(broker: RedisBroker) -> list[str]:
    return sorted(k.decode() for k in broker.client.scan_iter(match=f"{broker.keys.tag}:*"))


def recount(broker: RedisBroker) -> dict[tuple[Lane, State], int]:
    """Counts per (lane, state) from the message hashes themselves."""
    found: dict[tuple[Lane, State], int] = {}
    for key in broker.client.scan_iter(match=f"{broker.keys.message}*"):
        lane, state = broker.client.hmget(key, ["lane", "state"])
        assert isinstance(lane, bytes) and isinstance(state, bytes)
        pair = (Lane(lane.decode()), State(state.decode()))
        found[pair] = found.get(pair, 0) + 1
    return found


def counted(broker: RedisBroker) -> dict[tuple[Lane, State], int]:
    counts, _, _ = broker._stats(broker.clock(), None)
    return {pair: n for pair, n in counts.items() if n}


# -- key layout -----------------------------------------------------------------------------
def test_every_key_is_under_the_prefix_in_one_cluster_slot(
    broker: RedisBroker, clock: ManualClock
) -> None:
    broker.enqueue_many([NewMessage(PAYLOAD, lane=lane) for lane in LANE_ORDER])
    broker.enqueue_many([NewMessage(PAYLOAD, idempotency_key="k", send_at=clock() + 60)])
    jobs = broker.lease("w", 4, 30)  # the fourth stays leased
    broker.settle([Outcome(jobs[0], Action.COMPLETE), Outcome(jobs[1], Action.BURY, error="x")])
    broker.retry(jobs[2], 10, "later")
    names = keys_of(broker)
    kinds = {name.split(":")[1] for name in names}
    assert kinds >= {"m", "p", "ready", "delayed", "leased", "dead", "final", "counts", "idem"}
    assert all(name.startswith(f"{{{broker.prefix}}}:") for name in names)
    assert {key_slot(name.encode()) for name in names} == {key_slot(broker.prefix.encode())}


def test_a_payload_is_stored_once_and_dropped_when_sent(broker: RedisBroker) -> None:
    sent, dead = broker.enqueue_many([NewMessage(PAYLOAD), NewMessage(PAYLOAD, max_attempts=1)])
    payload_key = broker.keys.payload
    assert broker.client.get(payload_key + sent) == PAYLOAD
    assert broker.client.hget(broker.keys.message + sent, "payload") is None
    first, second = broker.lease("w", 2, 30)
    broker.complete([first])
    broker.bury(second, "550")
    assert broker.client.exists(payload_key + sent) == 0
    assert broker.client.get(payload_key + dead) == PAYLOAD  # kept: it may be requeued
    retention_ms = broker.options.retention * 1000
    for key in (broker.keys.message + sent, broker.keys.message + dead, payload_key + dead):
        assert 0 < broker.client.pttl(key) <= retention_ms  # the safety net if nobody purges
    assert broker.requeue_dead([dead]) == 1
    assert broker.client.pttl(payload_key + dead) == -1  # live again: no TTL


def test_prefixes_keep_queues_apart(broker: RedisBroker, clock: ManualClock) -> None:
    other = open_test_broker(clock)
    try:
        other.enqueue_many([NewMessage(b"other")])
        broker.enqueue_many([NewMessage(b"mine")])
        assert [job.payload for job in broker.lease("w", 10, 30)] == [b"mine"]
        broker.purge()
        assert keys_of(broker) == []
        assert other.stats().count(State.QUEUED) == 1
    finally:
        other.purge()
        other.close()


# -- scripts and re-runs --------------------------------------------------------------------
def test_scripts_survive_script_flush(broker: RedisBroker) -> None:
    broker.client.script_flush()
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD)])
    broker.client.script_flush()
    [job] = broker.lease("w", 1, 30)
    broker.client.script_flush()
    assert broker.complete([job]) == [message_id]


def test_a_settle_rerun_after_success_changes_nothing(
    broker: RedisBroker, clock: ManualClock
) -> None:
    broker.enqueue_many([NewMessage(PAYLOAD) for _ in range(5)])
    jobs = broker.lease("w", 5, 30)
    outcomes = [
        Outcome(jobs[0], Action.COMPLETE),
        Outcome(jobs[1], Action.RETRY, delay=5, error="451"),
        Outcome(jobs[2], Action.BURY, error="550"),
        Outcome(jobs[3], Action.RELEASE),
        Outcome(jobs[4], Action.DEFER, delay=5, error="provider down"),
    ]
    assert len(broker.settle(outcomes)) == 5
    before = (keys_of(broker), counted(broker))
    assert broker.settle(outcomes) == []  # as if the first reply was lost and the call retried
    assert (keys_of(broker), counted(broker)) == before
    assert counted(broker) == recount(broker)


def test_a_stale_token_is_refused_after_reap_and_re_lease(
    broker: RedisBroker, clock: ManualClock
) -> None:
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD)])
    [old] = broker.lease("slow", 1, 10)
    clock.advance(10)
    assert broker.reap_expired() == 1
    [new] = broker.lease("fast", 1, 10)
    assert new.token == old.token + 1
    for action in Action:
        assert broker.settle([Outcome(old, action, error="stale")]) == []
    assert broker.heartbeat([old], 60) == []
    info = broker.get(message_id)
    assert info is not None and (info.state, info.attempts) == (State.LEASED, 2)
    assert broker.complete([new]) == [message_id]


def test_a_lease_repeated_with_its_request_id_returns_the_same_jobs(broker: RedisBroker) -> None:
    broker.enqueue_many([NewMessage(b"m%d" % i) for i in range(10)])
    first = broker.lease("w", 4, 30, request_id="lease-1")
    again = broker.lease("w", 4, 30, request_id="lease-1")  # as if the reply had been lost
    assert again == first and len(first) == 4
    assert broker.stats().count(State.LEASED) == 4
    broker.complete(first[:1])
    assert broker.lease("w", 4, 30, request_id="lease-1") == first[1:]  # what it still holds
    other = broker.lease("w", 4, 30, request_id="lease-2")
    assert not {job.id for job in other} & {job.id for job in first}
    assert broker.stats().count(State.LEASED) == 7
    ttl = broker.client.pttl(broker.keys.lease_request + "lease-1")
    assert 0 < ttl <= 30_000  # kept as long as the lease, no longer


def test_a_lease_whose_reply_is_lost_is_sent_again_without_leasing_more(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.enqueue_many([NewMessage(b"m%d" % i) for i in range(10)])
    assert broker.lease("w", 1, 30, lanes=[Lane.BULK]) == []  # the script is loaded
    read_response = redis.connection.Connection.read_response
    lose = {"next": True}

    def lost_once(self: redis.connection.Connection, *args: Any, **kwargs: Any) -> Any:
        reply = read_response(self, *args, **kwargs)  # the script ran...
        if lose["next"]:
            lose["next"] = False
            self.disconnect()
            raise redis.ConnectionError("connection reset before the reply arrived")
        return reply

    monkeypatch.setattr(redis.connection.Connection, "read_response", lost_once)
    jobs = broker.lease("w", 4, 30)  # redis-py's Retry sends it again after the reset
    assert not lose["next"] and len(jobs) == 4
    assert broker.stats().count(State.LEASED) == 4  # nothing leased twice, nothing orphaned
    assert len(broker.lease("w", 10, 30)) == 6


def test_an_enqueue_rerun_with_the_same_ids_stores_nothing_twice(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = count()
    monkeypatch.setattr(redis_broker, "new_id", lambda: f"{next(numbers) % 3:032x}")
    batch = [NewMessage(PAYLOAD, lane=Lane.BULK, idempotency_key=f"k{i}") for i in range(3)]
    ids = broker.enqueue_many(batch)
    assert broker.enqueue_many(batch) == ids  # the same ids again: a retried call
    assert broker.stats().count(State.QUEUED) == 3
    assert broker.client.zcard(broker.keys.ready[LANE_ORDER.index(Lane.BULK)]) == 3
    broker.complete(broker.lease("w", 3, 30))
    assert broker.enqueue_many(batch) == ids  # a re-run after they were sent
    assert broker.stats().count(State.SENT) == 3
    assert not [key for key in keys_of(broker) if key.startswith(broker.keys.payload)]


def test_a_message_whose_key_has_an_owner_leaves_no_payload(broker: RedisBroker) -> None:
    first, again = broker.enqueue_many([
        NewMessage(b"first", idempotency_key="k"), NewMessage(b"again", idempotency_key="k"),
    ])  # fmt: skip
    assert first == again
    assert [key for key in keys_of(broker) if key.startswith(broker.keys.payload)] == [
        broker.keys.payload + first
    ]


def test_counts_agree_with_the_messages_after_every_kind_of_change(
    broker: RedisBroker, clock: ManualClock
) -> None:
    ids = broker.enqueue_many([NewMessage(PAYLOAD, lane=lane, max_attempts=2) for lane in Lane])
    broker.enqueue_many([NewMessage(PAYLOAD, send_at=clock() + 30) for _ in range(3)])
    broker.cancel(ids[4])
    jobs = broker.lease("w", 3, 10)
    broker.settle([Outcome(jobs[0], Action.COMPLETE), Outcome(jobs[1], Action.BURY, error="x")])
    clock.advance(30)
    assert broker.reap_expired() == 1
    assert broker.promote_due() == 3
    broker.requeue_dead()
    assert counted(broker) == recount(broker)
    clock.advance(broker.options.retention + 1)
    assert broker.purge_expired() == 2  # the sent one and the cancelled one
    assert counted(broker) == recount(broker)


@pytest.mark.parametrize("age", [0.4, 59.5, 119.6, 150, 7199, 7200, 86399.9, 172800, 9e5])
def test_the_scripts_word_a_burial_as_the_python_does(
    broker: RedisBroker, clock: ManualClock, age: float
) -> None:
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD, max_attempts=1, expires_at=3e9)])
    clock.advance(age)
    [job] = broker.lease("w", 1, 1e6)
    broker.retry(job, 0, "451 later")
    assert broker.get(message_id).last_error == gave_up(1, age, "451 later")  # type: ignore[union-attr]


def test_a_message_stored_before_expiry_never_expires_by_age(
    broker: RedisBroker, clock: ManualClock
) -> None:
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD, max_attempts=3)])
    broker.client.hdel(broker.keys.message + message_id, "expires_at")  # as emailq 0.2 stored it
    assert broker.get(message_id).expires_at == math.inf  # type: ignore[union-attr]
    clock.advance(30 * 86400)
    [job] = broker.lease("w", 1, 30)
    assert (job.id, job.max_attempts, job.expires_at) == (message_id, 3, math.inf)
    assert broker.retry(job, 86400, "451")
    assert broker.get(message_id).state == State.RETRYING  # type: ignore[union-attr]


# -- one clock: Redis's ------------------------------------------------------------------------
@pytest.fixture
def real_time_broker(redis_up: None) -> Iterator[RedisBroker]:
    """A broker on the server's clock (opened without one), as deployments run."""
    opened = RedisBroker.from_url(f"{REDIS_URL}?prefix=emailq-test-{uuid.uuid4().hex}")
    yield opened
    opened.purge()
    opened.close()


def server_time(broker: RedisBroker) -> float:
    seconds, micros = broker.client.time()
    return float(seconds + micros / 1_000_000)


def test_a_lease_expires_lease_s_after_redis_time(real_time_broker: RedisBroker) -> None:
    broker = real_time_broker
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD)])
    before = server_time(broker)
    broker.lease("w", 1, 30)
    after = server_time(broker)
    score = broker.client.zscore(broker.keys.leased, message_id)
    assert score is not None
    assert before + 30 - 0.001 <= score / 1000 <= after + 30 + 0.001
    assert after <= broker.now() <= server_time(broker)


def test_a_worker_whose_clock_is_20s_ahead_neither_reaps_live_leases_nor_sends_early(
    real_time_broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = real_time_broker
    [leased] = broker.enqueue_many([NewMessage(PAYLOAD)])
    broker.lease("on-time-worker", 1, 10)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 20)  # this process runs ahead
    ahead = RedisBroker(broker.client, broker.prefix)  # another worker, on the same queue
    assert ahead.reap_expired() == 0
    assert ahead.get(leased).state == State.LEASED  # type: ignore[union-attr]
    [later] = ahead.enqueue_many([NewMessage(PAYLOAD, send_at=server_time(broker) + 10)])
    assert ahead.get(later).state == State.SCHEDULED  # type: ignore[union-attr]
    assert ahead.lease("fast-clock-worker", 10, 10) == []
    assert abs(ahead.now() - server_time(broker)) < 1


def test_a_deployment_keeps_time_by_the_redis_clock(
    real_time_broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 20)
    url = f"{REDIS_URL}?prefix={real_time_broker.prefix}"
    with deployment_for(url) as deployment:  # its clock defaults to the wall clock's now
        assert abs(deployment.broker.now() - server_time(real_time_broker)) < 1


def test_an_injected_clock_is_still_the_brokers_time(
    broker: RedisBroker, clock: ManualClock
) -> None:
    [message_id] = broker.enqueue_many([NewMessage(PAYLOAD)])
    broker.lease("w", 1, 30)
    assert broker.now() == clock()
    assert broker.client.zscore(broker.keys.leased, message_id) == (clock() + 30) * 1000


# -- lane sharing in Lua is scheduling.allot ------------------------------------------------
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 30),
    ready=st.lists(st.integers(0, 12), min_size=5, max_size=5),
    credit=st.lists(st.integers(-20, 20), min_size=4, max_size=4),
    weights=st.lists(st.integers(1, 9), min_size=4, max_size=4),
)
def test_the_lease_script_shares_lanes_exactly_as_allot(
    redis_up: None, n: int, ready: list[int], credit: list[int], weights: list[int]
) -> None:
    lane_weights = dict(zip(SHARED_LANES, weights, strict=True))
    broker = open_test_broker(ManualClock(), BrokerOptions(lane_weights=lane_weights))
    try:
        for lane, many in zip(LANE_ORDER, ready, strict=True):
            if many:
                broker.enqueue_many([NewMessage(b"m", lane=lane) for _ in range(many)])
        start: dict[Any, Any] = {
            lane.value: c for lane, c in zip(SHARED_LANES, credit, strict=True)
        }
        broker.client.hset(broker.keys.credit, mapping=start)
        taken = [job.lane for job in broker.lease("w", n, 30)]
        expected_credit: dict[Lane, int] = dict(zip(SHARED_LANES, credit, strict=True))
        expected = allot(
            n, dict(zip(LANE_ORDER, ready, strict=True)), lane_weights, expected_credit
        )
        assert {lane: taken.count(lane) for lane in LANE_ORDER} == expected
        stored: dict[Any, Any] = broker.client.hgetall(broker.keys.credit)
        assert {Lane(k.decode()): int(v) for k, v in stored.items()} == expected_credit
    finally:
        broker.purge()
        broker.close()


# -- connecting -----------------------------------------------------------------------------
class FakeConfig:
    def __init__(self, reply: dict[Any, Any] | Exception) -> None:
        self.reply = reply

    def config_get(self, pattern: str) -> dict[Any, Any]:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_a_policy_that_may_evict_mail_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="emailq.broker.redis_client"):
        lru = FakeConfig({b"maxmemory-policy": b"allkeys-lru"})
        assert warn_unless_noeviction(lru) == "allkeys-lru"  # type: ignore[arg-type]
        assert "noeviction" in caplog.records[-1].message
        assert caplog.records[-1].levelno == logging.WARNING
        caplog.clear()
        fine = FakeConfig({"maxmemory-policy": "noeviction"})
        assert warn_unless_noeviction(fine) == "noeviction"  # type: ignore[arg-type]
        assert not caplog.records
        disabled = FakeConfig(redis.ResponseError("unknown command 'CONFIG'"))
        assert warn_unless_noeviction(disabled) is None  # type: ignore[arg-type]
        assert all(record.levelno < logging.WARNING for record in caplog.records)


def test_urls_pick_the_client_and_the_prefix() -> None:
    client, prefix = connect("redis://127.0.0.1:6390/3?prefix=queue-a")
    kwargs = client.connection_pool.connection_kwargs
    assert (prefix, kwargs["port"], kwargs["db"]) == ("queue-a", 6390, 3)
    assert kwargs["retry"].get_retries() >= 30 and kwargs["decode_responses"] is False
    assert connect("unix:///run/redis.sock")[1] == "emailq"
    client, prefix = connect("redis+sentinel://:pw@s1:26380,[::1],s3/mail?db=2&prefix=q")
    pool: Any = client.connection_pool
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [
        ("s1", 26380), ("::1", 26379), ("s3", 26379),
    ]  # fmt: skip
    assert (pool.service_name, pool.connection_kwargs["db"], prefix) == ("mail", 2, "q")
    assert pool.connection_kwargs["password"] == "pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost/0?prefix={braces}",
        "redis://localhost/0?prefix=",
        "redis+sentinel://s1:26379/",
        "redis+sentinel://s1:26379/mail?db=x",
        "redis+sentinel://s1:port/mail",
        "redis+sentinel://s1/mail?unknown=1",
        "http://localhost",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        connect(url)


def test_the_retry_budget_outlasts_a_sentinel_failover() -> None:
    retry = redis_client.client_options()["retry"]
    backoff = retry._backoff
    waited = sum(backoff.compute(failures) for failures in range(1, retry.get_retries() + 1))
    assert waited >= 45  # Sentinel's down-after-milliseconds defaults to 30 s
    assert redis.ConnectionError in retry._supported_errors
    assert redis.TimeoutError in retry._supported_errors


# -- a full Redis ------------------------------------------------------------------------------
@pytest.fixture
def small_redis(redis_server: str, tmp_path: Path) -> Iterator[str]:
    """A Redis of our own with 3 MB of memory, refusing writes when full (as emailq requires)."""
    port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory", "3mb",
         "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: answers(port, "PING") is not None, "redis-server start")
        yield f"redis://127.0.0.1:{port}/0?prefix=full"
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_full_redis_still_leases_and_settles_and_takes_mail_again_once_it_is_sent(
    small_redis: str,
) -> None:
    with RedisBroker.from_url(small_redis) as broker:
        assert broker.check() is None
        stored: list[str] = []
        with pytest.raises(BrokerFull, match="maxmemory"):
            for _ in range(1000):
                stored += broker.enqueue_many([NewMessage(b"x" * 20_000) for _ in range(5)])
        assert 20 < len(stored) < 200
        reason = broker.check()
        assert reason is not None and re.fullmatch(
            r"full: Redis used_memory \d\.\d MB ≥ (95% of )?maxmemory 3\.0 MB", reason
        ), reason
        assert broker.ping()  # up, but full: readiness says which
        # Leasing and settling free memory, or move it: they run at maxmemory.
        sent: list[str] = []
        while jobs := broker.lease("w", 40, 60):
            assert sorted(broker.complete(jobs)) == sorted(job.id for job in jobs)
            sent += [job.id for job in jobs]
        assert sorted(sent) == sorted(stored)
        assert broker.stats().count(State.SENT) == len(stored)
        assert broker.check() is None
        assert broker.enqueue_many([NewMessage(b"room again")]) != []


def test_a_full_redis_settles_through_the_workers_asyncio_client_too(small_redis: str) -> None:
    with RedisBroker.from_url(small_redis) as broker:
        stored: list[str] = []
        with pytest.raises(BrokerFull, match="maxmemory"):
            for _ in range(1000):
                stored += broker.enqueue_many([NewMessage(b"x" * 20_000) for _ in range(5)])

        async def drain() -> list[str]:
            calls = broker.calls()
            assert isinstance(calls, RedisCalls)
            try:
                sent: list[str] = []
                while jobs := broker.lease("w", 40, 60):
                    sent += await calls.settle([Outcome(job, Action.COMPLETE) for job in jobs])
                return sent
            finally:
                await calls.aclose()

        assert sorted(asyncio.run(drain())) == sorted(stored)
        assert broker.enqueue_many([NewMessage(b"room again")]) != []


def test_check_says_when_redis_cannot_be_reached() -> None:
    nobody = redis.Redis(port=free_port(), retry=None, socket_connect_timeout=1)
    with RedisBroker(nobody) as broker:
        reason = broker.check()
    assert reason is not None and reason.startswith("unreachable: "), reason


# -- Sentinel failover ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def answers(port: int, *command: str) -> Any:
    try:
        return redis.Redis(port=port, socket_timeout=1).execute_command(*command)
    except redis.RedisError:
        return None


@pytest.fixture
def sentinel_setup(tmp_path: Path, redis_server: str) -> Iterator[dict[str, Any]]:
    """A master, its replica and one Sentinel watching them, each on a free port."""
    server = redis_server
    master, replica, sentinel = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    log = ["--logfile", str(tmp_path / "redis.log")]
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor mail 127.0.0.1 {master} 1\n"
        "sentinel down-after-milliseconds mail 1000\nsentinel failover-timeout mail 3000\n"
    )
    procs = {
        "master": subprocess.Popen([server, "--port", str(master), *common, *log]),
        "replica": subprocess.Popen(
            [server, "--port", str(replica), "--replicaof", "127.0.0.1", str(master), *common, *log]
        ),
        "sentinel": subprocess.Popen([server, str(config), "--sentinel"]),
    }
    try:
        wait_until(
            lambda: (
                (answers(replica, "INFO", "replication") or {}).get("master_link_status") == "up"
            ),
            "replication",
        )
        wait_until(lambda: bool(answers(sentinel, "SENTINEL", "REPLICAS", "mail")), "discovery")
        yield {"sentinel": sentinel, "replica": replica, "procs": procs}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_a_worker_carries_on_through_a_sentinel_failover(sentinel_setup: dict[str, Any]) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel_setup['sentinel']}/mail?prefix=failover"
    with RedisBroker.from_url(url) as broker:
        ids = broker.enqueue_many([NewMessage(PAYLOAD) for _ in range(10)])
        assert broker.client.wait(1, 5000) == 1  # replicated before the master dies
        sentinel_setup["procs"]["master"].kill()
        # The next call waits the failover out inside the retry budget, then finds the new
        # master through Sentinel and reloads its scripts there.
        jobs = broker.lease("w", 10, 60)
        assert sorted(job.id for job in jobs) == sorted(ids)
        assert sorted(broker.complete(jobs)) == sorted(ids)
        assert broker.enqueue_many([NewMessage(b"after")]) != []
        assert answers(sentinel_setup["replica"], "ROLE")[0] == b"master"
        assert broker.ping() is True  # the readiness probe's own connection finds it too
