"""What the autoscaler asks the broker (both backends): mail due soon, and one named lease."""

from __future__ import annotations

from emailq.broker import Broker, NewMessage
from emailq.clock import ManualClock
from emailq.lanes import Lane


def test_due_within_counts_scheduled_and_retrying_mail_per_lane(
    broker: Broker, clock: ManualClock
) -> None:
    now = clock()
    broker.enqueue_many(
        [NewMessage(b"x", lane=Lane.WEDDING_DAY, send_at=now + 600) for _ in range(3)]
        + [NewMessage(b"x", lane=Lane.BULK, send_at=now + 60)]
        + [NewMessage(b"x", lane=Lane.CRITICAL, send_at=now + 3600)]
        + [NewMessage(b"x", lane=Lane.STANDARD)]  # ready now: not "coming"
    )
    [job] = broker.lease("w", 1, 30)
    broker.retry(job, 120, "451 later")  # standard, due in 2 minutes
    assert broker.due_within(900) == {Lane.WEDDING_DAY: 3, Lane.BULK: 1, Lane.STANDARD: 1}
    assert broker.due_within(90) == {Lane.BULK: 1}
    clock.advance(3000)
    assert broker.due_within(600)[Lane.CRITICAL] == 1


def test_a_named_lease_has_one_holder_until_it_expires_or_is_released(
    broker: Broker, clock: ManualClock
) -> None:
    assert broker.hold_lease("autoscaler", "a|1", 30)
    assert not broker.hold_lease("autoscaler", "b", 30)
    assert broker.hold_lease("other", "b", 30)  # leases are by name
    clock.advance(20)
    assert broker.hold_lease("autoscaler", "a|1", 30)  # renewed: lasts until +50
    clock.advance(20)
    assert not broker.hold_lease("autoscaler", "b", 30)
    clock.advance(11)
    assert broker.hold_lease("autoscaler", "b", 30)  # a's lapsed
    assert not broker.hold_lease("autoscaler", "a|1", 30)
    broker.release_lease("autoscaler", "a|1")  # not a's to release: b keeps it
    assert not broker.hold_lease("autoscaler", "a|1", 30)
    broker.release_lease("autoscaler", "b")
    assert broker.hold_lease("autoscaler", "a|1", 30)


def test_ceremonies_counts_live_wedding_mail_per_ceremony_soonest_first(
    broker: Broker, clock: ManualClock
) -> None:
    now = clock()
    soon, later, far = now + 1800, now + 5400, now + 86_400
    broker.enqueue_many(
        [NewMessage(b"x", lane=Lane.WEDDING_DAY, ceremony_at=later) for _ in range(3)]
        + [NewMessage(b"x", lane=Lane.CRITICAL, ceremony_at=soon) for _ in range(2)]
        + [NewMessage(b"x", lane=Lane.PRE_WEDDING, ceremony_at=soon, send_at=now + 600)]
        + [NewMessage(b"x", lane=Lane.BULK, ceremony_at=far)]
        + [NewMessage(b"x", lane=Lane.STANDARD)]  # no wedding: not a ceremony's
        + [NewMessage(b"x", lane=Lane.BULK, ceremony_at=now - 600)]  # past: not ahead
    )
    assert broker.ceremonies(7200) == [(soon, 3), (later, 3)]
    first, second = broker.lease("w", 2, 30, lanes=[Lane.CRITICAL])
    broker.complete([first])  # sent: no longer waits for its ceremony
    broker.retry(second, 60, "451 later")  # retrying: still does
    assert broker.ceremonies(7200) == [(soon, 2), (later, 3)]
    assert broker.ceremonies(3600) == [(soon, 2)]
    assert broker.ceremonies(7200, limit=4) == [(soon, 2), (later, 2)]  # bounded
    clock.advance(3600)  # the first ceremony is past
    assert broker.ceremonies(7200) == [(later, 3)]
    assert broker.ceremonies(90_000)[-1] == (far, 1)


def test_intake_gives_the_broker_the_ceremony_of_wedding_mail(
    broker: Broker, clock: ManualClock
) -> None:
    from datetime import UTC, datetime

    from emailq.intake import to_new_message
    from emailq.message import parse_email

    ceremony = datetime.fromtimestamp(clock() + 3 * 3600, UTC)
    email = parse_email({
        "from": "a@x.example", "to": "b@y.example", "subject": "s", "text": "t",
        "wedding": {"wedding_id": "w1", "kind": "vendor_update",
                    "ceremony_at": ceremony.isoformat()},
    })  # fmt: skip
    broker.enqueue_many([to_new_message(email, datetime.fromtimestamp(clock(), UTC))])
    assert broker.ceremonies(4 * 3600) == [(ceremony.timestamp(), 1)]
