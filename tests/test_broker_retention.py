"""What a broker keeps of a sent email: its record, not its body (issue 11). Read from each
backend's own storage, as someone holding a copy of the SQLite file or Redis would."""

from __future__ import annotations

import sqlite3

from emailq.broker import Action, Broker, BrokerOptions, NewMessage, Outcome, State, open_broker
from emailq.broker.redis import RedisBroker
from emailq.broker.sqlite import SQLiteBroker
from emailq.clock import ManualClock

BODY = b"To: guest@example.org\r\n\r\nThe ceremony moved to 16:30."


def stored_payload(broker: Broker, message_id: str) -> bytes | None:
    if isinstance(broker, SQLiteBroker):
        with sqlite3.connect(broker.path) as db:
            row = db.execute("SELECT payload FROM bodies WHERE id = ?", (message_id,)).fetchone()
        return bytes(row[0]) if row and row[0] else None
    assert isinstance(broker, RedisBroker)
    value: bytes | None = broker.client.get(broker.keys.payload + message_id)  # type: ignore[assignment]
    return value


def send_one(broker: Broker, outcome: Action = Action.COMPLETE) -> str:
    [message_id] = broker.enqueue_many([NewMessage(BODY, tenant="acme")])
    [job] = broker.lease("w1", 10, 30)
    broker.settle([Outcome(job, outcome, error="550 no such user")])
    return message_id


def test_a_sent_emails_body_is_dropped_by_default(broker: Broker) -> None:
    sent = send_one(broker)
    info = broker.get(sent)
    assert info is not None and info.state is State.SENT
    assert stored_payload(broker, sent) is None
    dead = send_one(broker, Action.BURY)  # dead mail keeps its body: it may be requeued
    assert stored_payload(broker, dead) == BODY


def test_a_sent_emails_body_is_kept_when_the_operator_asks(
    broker_url: str, clock: ManualClock
) -> None:
    options = BrokerOptions(retain_sent_payloads=True)
    with open_broker(broker_url, options, clock) as broker:
        sent = send_one(broker)
        assert stored_payload(broker, sent) == BODY
