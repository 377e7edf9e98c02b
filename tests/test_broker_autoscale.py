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
