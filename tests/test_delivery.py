"""The worker delivering through the SMTP provider into a real SMTP server (the sink)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator, Sequence

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from emailq.broker import Broker, NewMessage, State, open_broker
from emailq.clock import ManualClock
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.providers import Rendered, SendGate, SendResult
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.sink import SinkHandler, SmtpSink, message_id_of
from emailq.worker import Worker, WorkerSettings


class PickySink(SinkHandler):
    """Refuses some recipients: ``bounce…`` permanently (550), ``busy…`` for now (451)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bounce"):
            return "550 5.1.1 no such user"
        if address.startswith("busy"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(handler=PickySink(keep_data=True)) as server:
        yield server


def new_message(
    to: str, subject: str = "Hello", lane: Lane = Lane.STANDARD, max_attempts: int = 2
) -> NewMessage:
    parsed = parse_email(
        {"from": "Planner <planner@weddings.example>", "to": to, "subject": subject,
         "text": "Plain body", "html": "<p>HTML body</p>"}
    )  # fmt: skip
    return NewMessage(parsed.to_payload(), lane=lane, max_attempts=max_attempts)


def deliver(broker: Broker, sink: SmtpSink) -> list[object]:
    """Run one worker until the queue holds nothing ready, then return the outcomes."""
    outcomes: list[object] = []

    async def run() -> None:
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=3))
        worker = Worker(broker, provider, WorkerSettings(batch_size=10), on_settled=outcomes.extend)
        while jobs := await asyncio.to_thread(broker.lease, worker.name, 10, 30):
            await worker.process(jobs)
        await provider.close()

    asyncio.run(run())
    return outcomes


def test_every_message_arrives_once_with_its_id_header(broker: Broker, sink: SmtpSink) -> None:
    ids = broker.enqueue_many([new_message(f"guest{i}@example.org") for i in range(25)])
    deliver(broker, sink)
    assert sorted(d.message_id for d in sink.deliveries) == sorted(ids)
    assert {state for i in ids if (info := broker.get(i)) for state in [info.state]} == {State.SENT}
    parsed = email.message_from_bytes(sink.handler.data[ids[0]], policy=email.policy.default)
    assert parsed["Subject"] == "Hello"
    assert parsed["To"] == "guest0@example.org"
    assert parsed.get_body(("plain",)).get_content().strip() == "Plain body"  # type: ignore[union-attr]


def test_a_permanent_refusal_is_dead_with_the_reason(broker: Broker, sink: SmtpSink) -> None:
    [bounced, ok] = broker.enqueue_many(
        [new_message("bounce@example.org"), new_message("fine@example.org")]
    )
    deliver(broker, sink)
    info = broker.get(bounced)
    assert info is not None and info.state == State.DEAD
    assert info.last_error is not None and "550" in info.last_error
    assert [d.message_id for d in sink.deliveries] == [ok]


def test_a_temporary_refusal_is_retried_later(broker: Broker, sink: SmtpSink) -> None:
    [busy] = broker.enqueue_many([new_message("busy@example.org")])
    deliver(broker, sink)
    info = broker.get(busy)
    assert info is not None and info.state == State.RETRYING
    assert info.last_error is not None and "451" in info.last_error
    assert info.available_at > broker.clock()
    assert sink.count == 0


def test_critical_mail_is_sent_before_bulk_queued_earlier(broker: Broker, sink: SmtpSink) -> None:
    broker.enqueue_many([new_message(f"b{i}@example.org", lane=Lane.BULK) for i in range(30)])
    [urgent] = broker.enqueue_many([new_message("vendor@example.org", lane=Lane.CRITICAL)])
    deliver(broker, sink)
    # It is leased first, in the first batch of 10, which is sent concurrently.
    assert [d.message_id for d in sink.deliveries].index(urgent) < 10
    assert sink.count == 31


def test_message_id_of_reads_only_the_header_block() -> None:
    assert message_id_of(b"Subject: x\r\nX-Emailq-Id: abc\r\n\r\nbody") == "abc"
    assert message_id_of(b"Subject: x\r\n\r\nX-Emailq-Id: abc\r\n") == ""


class FlakySink(SinkHandler):
    """Answers 451 to the first try of every message, and drops the connection on one."""

    def __init__(self, drop_subject: str) -> None:
        super().__init__()
        self.drop_subject = drop_subject.encode()
        self.tried: set[str] = set()
        self.dropped = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if self.drop_subject in raw and not self.dropped:
            self.dropped += 1
            assert server.transport is not None
            server.transport.abort()  # the connection dies mid-transaction, no reply
            return "451 never seen"
        message_id = message_id_of(raw)
        if message_id not in self.tried:
            self.tried.add(message_id)
            return "451 4.7.1 greylisted, try again later"
        return await super().handle_DATA(server, session, envelope)


def test_temporary_failures_and_a_dropped_connection_are_retried_until_delivered(
    broker: Broker, clock: ManualClock
) -> None:
    handler = FlakySink(drop_subject="Subject: drop me")
    with SmtpSink(handler=handler) as flaky:
        ids = broker.enqueue_many(
            [new_message(f"g{i}@example.org", max_attempts=5) for i in range(12)]
            + [new_message("x@y.org", "drop me", max_attempts=5)]
        )
        deliver(broker, flaky)
        assert broker.stats().count(State.RETRYING) == 13
        assert handler.dropped == 1
        for _ in range(3):  # the dropped one needs a second round for its greylisting
            clock.advance(3600)
            deliver(broker, flaky)
        assert sorted(d.message_id for d in flaky.deliveries) == sorted(ids)
        assert broker.stats().count(State.SENT) == 13
        info = broker.get(ids[0])
        assert info is not None and info.attempts == 2


def test_a_login_the_server_refuses_is_retried_not_dead(broker: Broker, sink: SmtpSink) -> None:
    [message_id] = broker.enqueue_many([new_message("guest@example.org")])

    async def run() -> None:
        # The sink offers no AUTH: the login fails before any message is tried.
        provider = SmtpProvider(SmtpSettings(port=sink.port, username="u", password="p"))
        worker = Worker(broker, provider, WorkerSettings())
        await worker.process(broker.lease(worker.name, 10, 30))
        await provider.close()

    asyncio.run(run())
    info = broker.get(message_id)
    assert info is not None and info.state == State.RETRYING
    assert info.last_error is not None and info.last_error.startswith("connect/login")


class FailsOnce(SmtpProvider):
    """A provider whose first batch blows up (a bug, a dead dependency), then recovers."""

    failed = False

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("provider crashed")
        return await super()._send(batch, gate)


def test_a_crashing_provider_does_not_stop_the_worker(broker_url: str, sink: SmtpSink) -> None:
    with open_broker(broker_url) as broker:  # real time: the crashed batch is released
        ids = broker.enqueue_many([new_message(f"g{i}@example.org") for i in range(20)])

        async def run() -> None:
            provider = FailsOnce(SmtpSettings(port=sink.port))
            settings = WorkerSettings(error_backoff=0.05, retry_base_s=0.05)
            worker = Worker(broker, provider, settings)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            deadline = asyncio.get_running_loop().time() + 30
            while sink.count < len(ids):
                assert asyncio.get_running_loop().time() < deadline, "mail stopped flowing"
                await asyncio.sleep(0.02)
            stop.set()
            await running
            await provider.close()

        asyncio.run(run())
        assert sorted(d.message_id for d in sink.deliveries) == sorted(ids)
        assert broker.stats().count(State.SENT) == len(ids)
