"""Delivery you can trust, in-process on both brokers with a manual clock: retried like an
MTA, one message's failure stays that message's, a provider's outage buries nothing, a
failed settle sends nothing twice, rate limits hold no leases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator, Sequence

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from emailq.broker import Broker, NewMessage, Outcome, State
from emailq.clock import ManualClock
from emailq.errors import BrokerUnavailable
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.providers import Accepted, Provider, Rendered, SendResult, Transient
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.ratelimit import MemoryLimiter
from emailq.ratelimit.rules import RateRules
from emailq.sink import SinkHandler, SmtpSink, free_port
from emailq.worker import Worker, WorkerSettings
from faults import Greylisting, SlowSink, copies, fill, invitations

FAST = WorkerSettings(batch_size=100, retry_base_s=60, retry_cap_s=3600, pause_base_s=0.01,
                      pause_cap_s=0.05, lease_s=30)  # fmt: skip


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


async def drain(
    broker: Broker, clock: ManualClock, worker: Worker, step_s: float, rounds: int
) -> None:
    """Lease and deliver until nothing is left, moving the clock ``step_s`` each round."""
    for _ in range(rounds):
        while jobs := await asyncio.to_thread(broker.lease, worker.name, 100, 30):
            await worker.process(jobs)
        if not broker.stats().backlog:
            return
        clock.advance(step_s)


def run(*steps: Awaitable[None], provider: Provider) -> None:
    """The steps in one event loop (a provider's connections belong to it), then close."""

    async def main() -> None:
        try:
            for step in steps:
                await step
        finally:
            await provider.close()

    asyncio.run(main())


def test_451_to_30_percent_of_messages_kills_none(broker: Broker, clock: ManualClock) -> None:
    ids = fill(broker, 2000)
    greylisting = Greylisting(share=0.3)
    with SmtpSink(handler=greylisting) as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=4))
        worker = Worker(broker, provider, FAST)
        run(drain(broker, clock, worker, step_s=3600, rounds=40), provider=provider)
        arrived = copies(sink)
    assert greylisting.refused > 500
    assert broker.stats().count(State.DEAD) == 0
    assert set(arrived) == set(ids) and max(arrived.values()) == 1


def test_a_relay_refusing_connections_for_ten_minutes_buries_nothing(
    broker: Broker, clock: ManualClock
) -> None:
    ids = fill(broker, 300)
    port = free_port()  # nobody listens: every connection is refused
    provider = SmtpProvider(SmtpSettings(port=port, pool_size=4))
    worker = Worker(broker, provider, FAST)
    sink = SmtpSink(port=port)

    async def outage_then_recovery() -> None:
        await drain(broker, clock, worker, step_s=30, rounds=20)  # ten minutes of outage
        assert broker.stats().count(State.DEAD) == 0
        info = broker.get(ids[0])
        assert info is not None and info.attempts == 0  # an outage spends no attempt
        assert info.last_error is not None and "connect" in info.last_error
        sink.start()  # the relay is back
        clock.advance(3600)
        await asyncio.sleep(0.1)  # the provider's pause (real time) is over
        await drain(broker, clock, worker, step_s=60, rounds=10)

    try:
        run(outage_then_recovery(), provider=provider)
        arrived = copies(sink)
    finally:
        sink.stop()
    assert set(arrived) == set(ids) and max(arrived.values()) == 1
    assert broker.stats().count(State.SENT) == len(ids)


class Buggy(SmtpProvider):
    """An SMTP provider with a bug that strikes one message (a poison message)."""

    def __init__(self, settings: SmtpSettings, poison: str) -> None:
        super().__init__(settings)
        self.poison = poison

    async def _transaction(self, client: aiosmtplib.SMTP, message: Rendered) -> SendResult:
        if message.message_id == self.poison:
            raise KeyError("a bug that only this message triggers")
        return await super()._transaction(client, message)


def test_a_poison_message_in_a_batch_of_100_harms_only_itself(
    broker: Broker, clock: ManualClock, sink: SmtpSink
) -> None:
    ids = fill(broker, 100)
    provider = Buggy(SmtpSettings(port=sink.port, pool_size=4), poison=ids[37])
    worker = Worker(broker, provider, FAST)
    run(drain(broker, clock, worker, step_s=3600, rounds=20), provider=provider)
    arrived = copies(sink)
    assert set(arrived) == set(ids) - {ids[37]} and max(arrived.values()) == 1
    poison = broker.get(ids[37])
    assert poison is not None and poison.state is State.DEAD
    assert poison.attempts == FAST.poison_attempts
    assert poison.last_error is not None and "KeyError" in poison.last_error


class SettleFailsOnce:
    """The real broker, whose first settle raises as a Redis failover or a busy SQLite
    file would, after the mail went out."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.failed = False

    def settle(self, outcomes: Sequence[Outcome]) -> list[str]:
        if not self.failed:
            self.failed = True
            raise BrokerUnavailable("injected: the broker did not answer")
        return self.broker.settle(outcomes)

    def __getattr__(self, name: str) -> object:
        return getattr(self.broker, name)


def test_a_settle_that_fails_after_sending_sends_nothing_twice(
    broker: Broker, clock: ManualClock, sink: SmtpSink
) -> None:
    ids = fill(broker, 50)
    flaky = SettleFailsOnce(broker)
    provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=4))
    worker = Worker(flaky, provider, FAST)  # type: ignore[arg-type]
    run(drain(broker, clock, worker, step_s=60, rounds=5), provider=provider)
    assert flaky.failed
    arrived = copies(sink)
    assert set(arrived) == set(ids) and max(arrived.values()) == 1
    assert broker.stats().count(State.SENT) == len(ids)


def test_mail_a_rate_limit_holds_back_waits_unleased_with_its_attempt_refunded(
    broker: Broker, clock: ManualClock, sink: SmtpSink
) -> None:
    ids = fill(broker, 30)
    rules = RateRules(provider_rate=1.0, provider_burst=5.0, critical_reserve=0.0)
    worker = Worker(broker, SmtpProvider(SmtpSettings(port=sink.port)), FAST,
                    limiter=MemoryLimiter(clock), rules=rules)  # fmt: skip

    async def one_batch() -> float:
        jobs = broker.lease(worker.name, 100, 30)
        try:
            return await worker.process(jobs)
        finally:
            await worker.provider.close()

    wait = asyncio.run(one_batch())
    assert wait > 0
    stats = broker.stats()
    assert stats.count(State.LEASED) == 0  # nothing waits while holding a lease
    assert stats.count(State.SENT) == 5 and stats.count(State.RETRYING) == 25
    held_back = [info for info in map(broker.get, ids) if info and info.state is State.RETRYING]
    assert len(held_back) == 25 and all(info.attempts == 0 for info in held_back)


def test_critical_mail_keeps_its_share_of_the_provider_limit(
    broker: Broker, clock: ManualClock, sink: SmtpSink
) -> None:
    broker.enqueue_many(invitations(20))  # bulk first: it would spend the whole burst
    rules = RateRules(provider_rate=0.001, provider_burst=10.0, critical_reserve=0.3)
    limiter = MemoryLimiter(clock)
    worker = Worker(broker, SmtpProvider(SmtpSettings(port=sink.port)), FAST,
                    limiter=limiter, rules=rules)  # fmt: skip

    async def scenario() -> None:
        await worker.process(broker.lease(worker.name, 100, 30, [Lane.STANDARD]))
        broker.enqueue_many([NewMessage(m.payload, lane=Lane.CRITICAL, validated=True)
                             for m in invitations(3)])  # fmt: skip
        await worker.process(broker.lease(worker.name, 100, 30, [Lane.CRITICAL]))

    run(scenario(), provider=worker.provider)
    assert broker.stats().count(State.SENT, Lane.STANDARD) == 7  # 10 less the 30 % reserve
    assert broker.stats().count(State.SENT, Lane.CRITICAL) == 3


def test_transient_failures_are_logged_with_counts_and_no_addresses(
    broker: Broker, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    fill(broker, 50)
    with SmtpSink(handler=Greylisting(share=1.0)) as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=2))
        worker = Worker(broker, provider, FAST)
        with caplog.at_level(logging.WARNING):
            run(drain(broker, clock, worker, step_s=60, rounds=1), provider=provider)
            worker.route.tally.report()
    lines = [r.getMessage() for r in caplog.records if "transient failures" in r.getMessage()]
    assert lines, "transient failures went unlogged"
    assert any("451 4.7.1 Greylisted" in line for line in lines)
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines) == 50
    assert not any("guest" in line for line in lines)


def test_an_unexpected_provider_crash_is_charged_per_message_not_refunded(
    broker: Broker, clock: ManualClock, sink: SmtpSink
) -> None:
    class CrashesBeforeSending(SmtpProvider):
        async def _send(self, batch: Sequence[Rendered], gate: object) -> list[SendResult]:
            raise RuntimeError("provider crashed")

    fill(broker, 10)
    provider = CrashesBeforeSending(SmtpSettings(port=sink.port))
    worker = Worker(broker, provider, FAST)
    run(drain(broker, clock, worker, step_s=3600, rounds=10), provider=provider)
    # Charged an attempt each time, so the batch dies after poison_attempts instead of
    # being released (attempt refunded) and leased again forever.
    assert broker.stats().count(State.DEAD) == 10


class RefusingSome(SinkHandler):
    """Refuses RCPT TO for some recipients: ``later`` ones with 451 the first time each,
    ``gone`` ones with 550 always; the rest are accepted."""

    def __init__(self, later: set[str], gone: set[str]) -> None:
        super().__init__()
        self.later, self.gone = set(later), gone

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.gone:
            return "550 5.1.1 No such user"
        if address in self.later:
            self.later.discard(address)
            return "451 4.2.1 Mailbox busy, try again"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_per_recipient_results_retry_only_the_refused_for_now_and_report_the_refused_for_good(
    broker: Broker, clock: ManualClock
) -> None:
    email = {"from": "planner@weddings.example", "subject": "Seating plan", "text": "Table 4",
             "to": ["bride@a.example", "caterer@b.example"], "cc": ["florist@c.example"],
             "bcc": ["gone@d.example"]}  # fmt: skip
    (message_id,) = broker.enqueue_many(
        [NewMessage(parse_email(email).to_payload(), validated=True)]
    )
    handler = RefusingSome(later={"caterer@b.example"}, gone={"gone@d.example"})
    with SmtpSink(handler=handler) as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=2))
        worker = Worker(broker, provider, FAST)
        run(drain(broker, clock, worker, step_s=3600, rounds=5), provider=provider)
        deliveries = [d.recipients for d in sink.deliveries]
    # The first attempt went to all it could; the second only to the one refused for now.
    assert deliveries == [("bride@a.example", "florist@c.example"), ("caterer@b.example",)]
    info = broker.get(message_id)
    assert info is not None and info.state is State.SENT and info.attempts == 2
    assert info.last_error is not None and "550" in info.last_error
    assert "gone@d.example" not in info.last_error  # reported, but not as a full address


def test_a_reply_that_outlasts_the_timeout_is_unsure_and_the_next_message_reconnects() -> None:
    slow = SlowSink(delay=1.0)  # holds its reply to the end of DATA past the timeout
    with SmtpSink(handler=slow) as sink:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=1, timeout=0.3))

        def message(n: int) -> Rendered:
            return Rendered(f"m{n}", "planner@weddings.example", (f"guest{n}@a.example",),
                            b"Subject: hi\r\n\r\nhello\r\n")  # fmt: skip

        results: list[SendResult] = []

        async def send(n: int) -> None:
            results.extend(await provider.send_batch([message(n)]))
            slow.delay = 0.0
            await asyncio.to_thread(sink.wait_for, n, 10)  # the server is itself again

        run(send(1), send(2), provider=provider)
        assert sink.count == 2
    first, second = results
    # The server may have taken the first: retried only as "unsure" (same provider, same key).
    assert isinstance(first, Transient) and first.unsure and "TimeoutError" in first.reason
    assert isinstance(second, Accepted)  # on a new connection: the old one was out of step
