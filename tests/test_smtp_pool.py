"""The SMTP provider's pool: its size follows the relay's reply time (or ?pool=N), and a
relay turning a connection away while others work makes the pool smaller, not the provider
paused. The relay is the built-in sink with a connection limit, as Postfix has one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from emailq.broker import Broker, NewMessage, State
from emailq.message import parse_email
from emailq.providers import Accepted, Rendered, Transient
from emailq.providers.factory import open_provider
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.providers.smtp_pool import (
    AUTO_MAX,
    AUTO_START,
    HOLD_MIN_S,
    MIN_SAMPLES,
    PoolSizer,
)
from emailq.sink import SmtpSink
from emailq.worker import Worker, WorkerSettings


def rendered(n: int) -> list[Rendered]:
    return [
        Rendered(f"m{i}", "planner@weddings.example", (f"guest{i}@example.org",),
                 b"Subject: hi\r\nX-Emailq-Id: m%d\r\n\r\nHello\r\n" % i)
        for i in range(n)
    ]  # fmt: skip


def send(provider: SmtpProvider, *batches: Sequence[Rendered]) -> list[list[object]]:
    async def run() -> list[list[object]]:
        try:
            return [list(await provider.send_batch(batch)) for batch in batches]
        finally:
            await provider.close()

    return asyncio.run(run())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(sizer: PoolSizer, reply_s: float) -> bool:
    """Reply times until the sizer decides (or a generous number pass without)."""
    for _ in range(max(MIN_SAMPLES, 4 * AUTO_MAX) + 1):
        if sizer.measured(sizer.epoch, reply_s):
            return True
    return False


def test_the_pool_grows_while_reply_times_stay_flat_up_to_its_ceiling() -> None:
    sizer = PoolSizer(clock=Clock())
    sizes = [sizer.limit]
    while feed(sizer, 0.020):  # a relay that answers as fast however many connections
        sizes.append(sizer.limit)
    assert sizes[0] == AUTO_START
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[-1] == AUTO_MAX


def test_the_pool_steps_back_when_more_connections_only_wait_longer() -> None:
    clock = Clock()
    sizer = PoolSizer(clock=clock)
    assert feed(sizer, 0.001 * sizer.limit)  # the first measure: one step up
    grown = sizer.limit
    assert grown > AUTO_START
    # Reply time grows as fast as the connections: N / L did not grow, so back down.
    assert feed(sizer, 0.001 * sizer.limit)
    assert sizer.limit == AUTO_START
    # And it stays there a while: no step is tried before the hold ends...
    assert not feed(sizer, 0.0001)
    clock.now += HOLD_MIN_S
    assert feed(sizer, 0.001 * sizer.limit)
    assert sizer.limit == grown
    # ... twice as long after each step that did not pay.
    assert feed(sizer, 0.001 * sizer.limit)
    assert sizer.limit == AUTO_START
    clock.now += HOLD_MIN_S
    assert not feed(sizer, 0.0001)
    clock.now += HOLD_MIN_S
    assert feed(sizer, 0.001 * sizer.limit)
    assert sizer.limit == grown


def test_a_relay_turning_connections_away_caps_the_pool_for_good() -> None:
    clock = Clock()
    sizer = PoolSizer(clock=clock)
    while sizer.limit < 20:
        assert feed(sizer, 0.020)
    assert sizer.shrink_to(12)
    assert sizer.limit == sizer.ceiling == 12
    clock.now += 3600
    while feed(sizer, 0.020):
        pass
    assert sizer.limit == 12


def test_a_fixed_pool_never_changes_with_reply_times() -> None:
    sizer = PoolSizer.of_size(16)
    assert not feed(sizer, 0.020)
    assert sizer.limit == sizer.ceiling == 16


def test_a_url_without_pool_sizes_itself_and_with_pool_is_fixed() -> None:
    auto = open_provider("smtp://127.0.0.1:2525")
    fixed = open_provider("smtp://127.0.0.1:2525?pool=32")
    assert isinstance(auto, SmtpProvider) and isinstance(fixed, SmtpProvider)
    assert not auto.pool.sizer.fixed and auto.pool.sizer.limit == AUTO_START
    assert auto.concurrency == AUTO_MAX  # the unsettled window: as many as it may open
    assert fixed.pool.sizer.fixed and fixed.pool.sizer.limit == fixed.concurrency == 32


def test_the_sink_greets_a_connection_beyond_its_limit_with_421() -> None:
    import smtplib

    with SmtpSink(max_connections=1) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port) as first:
            assert first.noop()[0] == 250
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", sink.port)
            assert refused.value.smtp_code == 421
        assert sink.connections.turned_away == 1


@pytest.mark.parametrize("pool", [6, None], ids=["pool=6", "automatic"])
def test_a_pool_bigger_than_the_relay_allows_sends_everything_on_the_connections_it_has(
    pool: int | None,
) -> None:
    with SmtpSink(max_connections=3) as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=pool))
        [results] = send(provider, rendered(40))
        assert all(isinstance(result, Accepted) for result in results), results
        assert sorted(d.message_id for d in sink.deliveries) == sorted(f"m{i}" for i in range(40))
        assert sink.connections.turned_away >= 1
        assert sink.connections.most_open == 3
        assert provider.pool.sizer.limit == 3


def test_a_relay_that_turns_every_connection_away_is_down() -> None:
    with SmtpSink(max_connections=0) as sink:
        [results] = send(SmtpProvider(SmtpSettings(port=sink.port, pool_size=4)), rendered(5))
    assert all(isinstance(r, Transient) and r.provider_down for r in results), results


def test_the_worker_charges_nothing_and_pauses_nothing_when_the_pool_was_too_big(
    broker: Broker,
) -> None:
    payload = parse_email({"from": "planner@weddings.example", "to": "guest@example.org",
                           "subject": "Save the date", "text": "Hello"}).to_payload()  # fmt: skip
    ids = broker.enqueue_many([NewMessage(payload) for _ in range(60)])

    async def run(sink: SmtpSink) -> Worker:
        provider = SmtpProvider(SmtpSettings(port=sink.port))  # automatic: starts above 2
        worker = Worker(broker, provider, WorkerSettings(batch_size=30))
        while jobs := await asyncio.to_thread(broker.lease, worker.name, 30, 30):
            await worker.process(jobs)
        await provider.close()
        return worker

    with SmtpSink(max_connections=2) as sink:
        worker = asyncio.run(run(sink))
        assert sink.connections.turned_away >= 1
        assert sink.connections.most_open == 2
    assert worker.route.pause.remaining == 0
    infos = [broker.get(i) for i in ids]
    assert {(info.state, info.attempts) for info in infos if info} == {(State.SENT, 1)}


def test_an_express_pool_opens_as_many_connections_as_the_bulk_pool_found_to_help() -> None:
    bulk = open_provider("smtp://127.0.0.1:2525")
    express = open_provider("smtp://127.0.0.1:2525")
    express.size_like(bulk)
    assert isinstance(bulk, SmtpProvider) and isinstance(express, SmtpProvider)
    assert feed(bulk.pool.sizer, 0.020)  # the bulk pool's sends measure the relay
    assert express.pool.sizer.limit == bulk.pool.sizer.limit > AUTO_START
    fixed = open_provider("smtp://127.0.0.1:2525?pool=8")
    fixed.size_like(bulk)
    assert isinstance(fixed, SmtpProvider) and fixed.pool.sizer.limit == 8
