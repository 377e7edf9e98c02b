"""A worker's lease, settle and heartbeat from its event loop (emailq.broker.calls): the same
answers as the broker's own methods, on both backends; Redis's on an asyncio client."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

from emailq.broker import Action, Broker, Job, NewMessage, Outcome, State, open_broker
from emailq.broker.calls import BrokerCalls
from emailq.broker.redis import RedisBroker, RedisCalls
from emailq.broker.redis_client import connect_async
from emailq.broker.sqlite import SQLiteBroker, SQLiteCalls
from emailq.lanes import Lane


def test_calls_settle_and_renew_only_what_the_lease_still_holds(broker: Broker) -> None:
    ids = broker.enqueue_many([NewMessage(b"one"), NewMessage(b"two"), NewMessage(b"three")])
    first, second, third = broker.lease("w", 3, 30)

    async def use() -> tuple[list[str], list[str]]:
        calls = broker.calls()
        try:
            stale = replace(second, token=second.token + 1)  # another worker's lease now
            renewed = await calls.heartbeat([first, stale, third], 30)
            settled = await calls.settle(
                [Outcome(first, Action.COMPLETE), Outcome(stale, Action.COMPLETE),
                 Outcome(third, Action.RETRY, delay=60, error="451 later")]
            )  # fmt: skip
            return renewed, settled
        finally:
            await calls.aclose()

    renewed, settled = asyncio.run(use())
    assert sorted(renewed) == sorted([first.id, third.id])
    assert sorted(settled) == sorted([first.id, third.id])
    states = {i: info.state for i in ids if (info := broker.get(i))}
    assert states == {first.id: State.SENT, second.id: State.LEASED, third.id: State.RETRYING}


def test_calls_lease_critical_first_and_a_repeated_request_gets_the_same_jobs(
    broker: Broker,
) -> None:
    bulk = broker.enqueue_many([NewMessage(b"invitation", lane=Lane.BULK) for _ in range(3)])
    (critical,) = broker.enqueue_many([NewMessage(b"ceremony moved", lane=Lane.CRITICAL)])

    async def use() -> tuple[list[Job], list[Job], list[Job]]:
        calls = broker.calls()
        try:
            first = await calls.lease("w", 2, 30, request_id="r1")
            again = await calls.lease("w", 2, 30, request_id="r1")  # its reply was lost
            rest = await calls.lease("w", 10, 30, [Lane.BULK])
            return first, again, rest
        finally:
            await calls.aclose()

    first, again, rest = asyncio.run(use())
    assert first[0].id == critical and first[1].id in bulk
    if isinstance(broker, RedisBroker):  # SQLite has no lost replies (Broker.lease)
        assert [(j.id, j.token) for j in again] == [(j.id, j.token) for j in first]
    leased = {job.id for job in (*first, *again, *rest)}
    assert leased == {critical, *bulk}


def test_sqlite_settles_on_the_loop_and_waits_for_another_writer_on_a_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    with open_broker(f"sqlite:///{path}") as broker:
        assert isinstance(broker, SQLiteBroker)
        broker.enqueue_many([NewMessage(b"one"), NewMessage(b"two")])
        first, second = broker.lease("w", 2, 30)
        assert broker.try_settle([Outcome(first, Action.COMPLETE)]) == [first.id]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write under way
        try:
            assert broker.try_settle([Outcome(second, Action.COMPLETE)]) is None  # no wait

            async def settle() -> list[str]:
                calls = broker.calls()
                asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
                try:
                    return await calls.settle([Outcome(second, Action.COMPLETE)])
                finally:
                    await calls.aclose()

            assert asyncio.run(settle()) == [second.id]  # waited for it on a thread
        finally:
            other.close()
        info = broker.get(second.id)
        assert info is not None and info.state is State.SENT


def test_redis_from_a_url_settles_on_an_asyncio_client_and_sentinel_on_threads(
    broker: Broker,
) -> None:
    async def kind() -> type[BrokerCalls]:
        calls = broker.calls()
        await calls.aclose()
        return type(calls)

    expected = RedisCalls if isinstance(broker, RedisBroker) else SQLiteCalls
    assert asyncio.run(kind()) is expected
    # Sentinel's master lookup is the sync client's (proven through failovers): no twin.
    assert connect_async("redis+sentinel://127.0.0.1:26379/mymaster") is None


def test_a_critical_enqueue_ends_the_express_loops_wait_on_redis(broker: Broker) -> None:
    async def waited(timeout: float) -> float:
        calls = broker.calls()
        try:
            await calls.wait_for_critical(1.0)  # Redis: ended by the subscription's reply
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, broker.enqueue_many, [NewMessage(b"moved", lane=Lane.CRITICAL)])
            began = loop.time()
            await calls.wait_for_critical(timeout)
            return loop.time() - began
        finally:
            await calls.aclose()

    if isinstance(broker, RedisBroker):
        assert asyncio.run(waited(30.0)) < 29, "the wait ran its whole course: no notice came"
    else:  # SQLite has no notices, but looks every few milliseconds, not once a timeout
        assert asyncio.run(waited(30.0)) < 29, "the wait ran its whole course"


def test_sqlite_answers_an_empty_poll_on_the_loop_while_a_writer_holds_its_connection(
    tmp_path: Path,
) -> None:
    """The express loop's look for critical mail waits for no thread: not for a write of
    another thread of the worker holding the broker's connection, nor for a thread hop."""
    broker = SQLiteBroker(tmp_path / "q.db")
    holding, release, let_go = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        with broker._lock:  # as a bulk settle on a thread holds it
            holding.set()
            release.wait(30)
        let_go.set()

    async def polls() -> tuple[list[Job], bool]:
        calls = broker.calls()
        try:
            empty = await calls.lease("w", 20, 30, [Lane.CRITICAL])
            answered_while_held = not let_go.is_set()
            release.set()
            broker.enqueue_many([NewMessage(b"moved", lane=Lane.CRITICAL)])
            return empty + await calls.lease("w", 20, 30, [Lane.CRITICAL]), answered_while_held
        finally:
            await calls.aclose()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        jobs, answered_while_held = asyncio.run(polls())
    finally:
        release.set()
        thread.join()
        broker.close()
    assert answered_while_held, "the empty poll waited for the writer"
    assert [job.payload for job in jobs] == [b"moved"]
