"""The audit trail: every state change writes its events, on both backends."""

from __future__ import annotations

import pytest

from emailq.broker import Action, Broker, BrokerOptions, NewMessage, Outcome, open_broker
from emailq.clock import ManualClock
from emailq.lanes import Lane
from emailq.privacy.audit import Kind, reply_code


def kinds(broker: Broker, message_id: str) -> list[Kind]:
    return [event.kind for event in broker.events(message_id)]


def test_a_delivery_lists_accepted_leased_attempt_sent(broker: Broker) -> None:
    origin = {"key": "k123", "reason": "kind invitation"}
    [message_id] = broker.enqueue_many(
        [NewMessage(b"x", lane=Lane.BULK, tenant="acme", recipient_hashes=("h1",), origin=origin)]
    )
    [job] = broker.lease("w1", 10, 30)
    broker.settle([Outcome(job, Action.COMPLETE, provider="smtp", provider_id="Q42")])
    events = broker.events(message_id)
    assert [e.kind for e in events] == [Kind.ACCEPTED, Kind.LEASED, Kind.ATTEMPT, Kind.SENT]
    accepted, leased, attempt, _ = events
    assert accepted.detail == {"tenant": "acme", "lane": "bulk", "rcpt": ["h1"], **origin}
    assert leased.detail == {"worker": "w1", "attempt": 1}
    assert attempt.detail == {"attempt": 1, "provider": "smtp", "provider_id": "Q42"}
    assert all(e.at == broker.clock() for e in events)


def test_retries_burials_deferrals_and_releases_are_recorded(
    broker: Broker, clock: ManualClock
) -> None:
    ids = broker.enqueue_many([NewMessage(b"x", max_attempts=2) for _ in range(4)])
    jobs = {job.id: job for job in broker.lease("w1", 10, 30)}
    a, b, c, d = (jobs[i] for i in ids)
    broker.settle([
        Outcome(a, Action.RETRY, 60, "451 4.7.1 try later", provider="smtp"),
        Outcome(b, Action.BURY, error="550 5.1.1 no such user", provider="smtp"),
        Outcome(c, Action.DEFER, 5, "provider down"),
        Outcome(d, Action.RELEASE),
    ])  # fmt: skip
    assert kinds(broker, a.id)[-2:] == [Kind.ATTEMPT, Kind.RETRIED]
    assert broker.events(a.id)[-2].detail["code"] == "451"
    assert kinds(broker, b.id)[-2:] == [Kind.ATTEMPT, Kind.DEAD]
    assert broker.events(b.id)[-1].detail["error"] == "550 5.1.1 no such user"
    assert kinds(broker, c.id)[-1] == Kind.DEFERRED
    assert kinds(broker, d.id)[-1] == Kind.RELEASED
    clock.advance(61)
    [again] = [j for j in broker.lease("w1", 10, 30) if j.id == a.id]
    broker.retry(again, 60, "451 again")  # its second attempt of two: buried
    assert kinds(broker, a.id)[-3:] == [Kind.LEASED, Kind.ATTEMPT, Kind.DEAD]


def test_cancel_reap_and_requeue_are_recorded(broker: Broker, clock: ManualClock) -> None:
    first, second = broker.enqueue_many([NewMessage(b"x"), NewMessage(b"y", send_at=clock() + 60)])
    assert kinds(broker, second) == [Kind.ACCEPTED, Kind.SCHEDULED]
    assert broker.cancel(second)
    assert kinds(broker, second)[-1] == Kind.CANCELLED
    [job] = broker.lease("w1", 1, 5)
    clock.advance(6)
    assert broker.reap_expired() == 1
    assert kinds(broker, first)[-1] == Kind.REQUEUED
    [job] = broker.lease("w1", 1, 5)
    broker.bury(job, "550 no")
    assert broker.requeue_dead([first]) == 1
    assert kinds(broker, first)[-1] == Kind.REQUEUED


def test_a_tenants_events_export_by_time_range(broker: Broker, clock: ManualClock) -> None:
    [early] = broker.enqueue_many([NewMessage(b"x", tenant="acme")])
    clock.advance(100)
    [late] = broker.enqueue_many([NewMessage(b"y", tenant="acme")])
    broker.enqueue_many([NewMessage(b"z", tenant="other")])
    events = broker.tenant_events("acme", clock() - 50, clock() + 1)
    assert [(e.message_id, e.kind) for e in events] == [(late, Kind.ACCEPTED)]
    everything = broker.tenant_events("acme", 0, clock() + 1)
    assert [e.message_id for e in everything] == [early, late]
    assert '"kind":"accepted"' in everything[0].to_json()


def test_audit_events_outlive_the_record_then_go(broker_url: str, clock: ManualClock) -> None:
    options = BrokerOptions(retention=3600, audit_retention=7200)
    with open_broker(broker_url, options, clock) as broker:
        [message_id] = broker.enqueue_many([NewMessage(b"x")])
        broker.complete(broker.lease("w1", 1, 30))
        clock.advance(3601)
        assert broker.purge_preview()["records"] == 1
        broker.purge_expired()
        assert broker.get(message_id) is None
        assert kinds(broker, message_id)[-1] == Kind.SENT  # the trail outlives the record
        clock.advance(3600)
        assert broker.purge_expired() >= 1
        assert broker.events(message_id) == []


def test_no_events_when_the_trail_is_off(broker_url: str, clock: ManualClock) -> None:
    with open_broker(broker_url, BrokerOptions(audit=False), clock) as broker:
        [message_id] = broker.enqueue_many([NewMessage(b"x")])
        broker.complete(broker.lease("w1", 1, 30))
        assert broker.events(message_id) == []


@pytest.mark.parametrize(
    ("text", "code"),
    [("451 4.7.1 try later", "451"), ("HTTP 429 too many", "429"), ("timed out", None),
     (None, None), ("refused 2 of 3: 550 5.1.1 ***@x.example", None)],
)  # fmt: skip
def test_reply_codes_are_read_from_a_reason(text: str | None, code: str | None) -> None:
    assert reply_code(text) == code
