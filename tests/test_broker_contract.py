"""The broker contract: every test here runs against SQLite and against Redis."""

from __future__ import annotations

import pytest

from emailq.broker import Action, Broker, BrokerOptions, NewMessage, Outcome, State, open_broker
from emailq.broker.expiry import DEFAULT_MAX_AGE
from emailq.clock import ManualClock
from emailq.lanes import DEFAULT_WEIGHTS, LANE_ORDER, Lane

PAYLOAD = bytes(range(256)) * 6  # 1.5 KB, every byte value: payloads are opaque bytes


def enqueue(broker: Broker, lane: Lane = Lane.STANDARD, n: int = 1, **kw: object) -> list[str]:
    return broker.enqueue_many([NewMessage(PAYLOAD, lane=lane, **kw) for _ in range(n)])  # type: ignore[arg-type]


def state_of(broker: Broker, message_id: str) -> State:
    info = broker.get(message_id)
    assert info is not None
    return info.state


# -- intake ---------------------------------------------------------------------------------
def test_enqueue_stores_messages_in_order_with_their_fields(broker: Broker) -> None:
    ids = broker.enqueue_many([
        NewMessage(PAYLOAD, lane=Lane.BULK, tenant="acme", max_attempts=3),
        NewMessage(b"second", lane=Lane.CRITICAL),
    ])  # fmt: skip
    assert len(ids) == len(set(ids)) == 2
    first = broker.get(ids[0])
    assert first is not None
    assert (first.state, first.lane, first.tenant, first.attempts, first.max_attempts) == (
        State.QUEUED, Lane.BULK, "acme", 0, 3,
    )  # fmt: skip
    assert first.enqueued_at == broker.clock()
    assert broker.get("no-such-id") is None
    assert broker.enqueue_many([]) == []


def test_payload_bytes_come_back_unchanged(broker: Broker) -> None:
    [message_id] = enqueue(broker)
    [job] = broker.lease("w1", 10, 30)
    assert (job.id, job.payload, job.attempts, job.token) == (message_id, PAYLOAD, 1, job.token)


def test_bad_messages_are_refused_before_anything_is_stored(broker: Broker) -> None:
    with pytest.raises(TypeError, match=r"messages\[1\]\.payload"):
        broker.enqueue_many([NewMessage(b"ok"), NewMessage("text")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"messages\[0\]\.max_attempts"):
        broker.enqueue_many([NewMessage(b"x", max_attempts=0)])
    with pytest.raises(ValueError, match=r"messages\[0\]\.expires_at must be a finite"):
        broker.enqueue_many([NewMessage(b"x", expires_at=float("inf"))])
    with pytest.raises(ValueError, match=r"messages\[0\]\.expires_at must be after its send_at"):
        broker.enqueue_many([NewMessage(b"x", send_at=2e9, expires_at=2e9 - 1)])
    with pytest.raises(ValueError, match="idempotency_key"):
        broker.enqueue_many([NewMessage(b"x", idempotency_key="")])
    assert broker.stats().backlog == 0


def test_idempotency_key_returns_the_first_id_and_stores_one_copy(
    broker: Broker, clock: ManualClock
) -> None:
    [first] = enqueue(broker, idempotency_key="guest-17")
    clock.advance(60)
    again = broker.enqueue_many([
        NewMessage(b"retry", idempotency_key="guest-17"),
        NewMessage(b"other", idempotency_key="guest-18"),
        NewMessage(b"dup in batch", idempotency_key="guest-18"),
        NewMessage(b"other tenant", idempotency_key="guest-17", tenant="t2"),
    ])  # fmt: skip
    assert again[0] == first
    assert again[1] == again[2] != first
    assert again[3] not in (first, again[1])
    assert broker.stats().count(State.QUEUED) == 3


def test_idempotency_key_is_forgotten_after_its_window(broker_url: str, clock: ManualClock) -> None:
    options = BrokerOptions(idempotency_ttl=100)
    with open_broker(broker_url, options=options, clock=clock) as broker:
        [first] = enqueue(broker, idempotency_key="k")
        clock.advance(99)
        assert enqueue(broker, idempotency_key="k") == [first]
        clock.advance(2)
        assert enqueue(broker, idempotency_key="k") != [first]


def test_scheduled_messages_wait_for_send_at(broker: Broker, clock: ManualClock) -> None:
    [later] = enqueue(broker, send_at=clock() + 120)
    [past] = enqueue(broker, send_at=clock() - 5)
    assert state_of(broker, later) == State.SCHEDULED
    assert [j.id for j in broker.lease("w", 10, 30)] == [past]
    clock.advance(119)
    assert broker.lease("w", 10, 30) == []
    clock.advance(1)
    assert [j.id for j in broker.lease("w", 10, 30)] == [later]


def test_promote_due_makes_scheduled_mail_ready(broker: Broker, clock: ManualClock) -> None:
    ids = enqueue(broker, n=3, send_at=clock() + 10)
    assert broker.promote_due() == 0
    clock.advance(10)
    assert broker.promote_due() == 3
    assert {state_of(broker, i) for i in ids} == {State.QUEUED}


# -- leasing order --------------------------------------------------------------------------
def test_critical_goes_first_even_when_enqueued_last(broker: Broker) -> None:
    enqueue(broker, Lane.BULK, 50)
    enqueue(broker, Lane.STANDARD, 50)
    critical = enqueue(broker, Lane.CRITICAL, 3)
    jobs = broker.lease("w", 3, 30)
    assert [j.id for j in jobs] == critical


def test_lanes_are_fifo_and_a_batch_comes_back_lane_ordered(broker: Broker) -> None:
    bulk = enqueue(broker, Lane.BULK, 5)
    standard = enqueue(broker, Lane.STANDARD, 5)
    jobs = broker.lease("w", 10, 30)
    assert [j.id for j in jobs] == standard + bulk


def test_a_saturated_lane_does_not_starve_bulk(broker: Broker) -> None:
    enqueue(broker, Lane.STANDARD, 900)
    enqueue(broker, Lane.BULK, 300)
    taken = {Lane.STANDARD: 0, Lane.BULK: 0}
    for _ in range(30):
        jobs = broker.lease("w", 10, 30)
        for job in jobs:
            taken[job.lane] += 1
        broker.complete(jobs)
    # standard:bulk weights are 2:1, so 300 slots split 200:100 (smooth, not bursty).
    assert taken == {Lane.STANDARD: 200, Lane.BULK: 100}


def test_single_message_leases_still_share_between_lanes(broker: Broker) -> None:
    enqueue(broker, Lane.WEDDING_DAY, 40)
    enqueue(broker, Lane.BULK, 40)
    lanes = []
    for _ in range(18):
        [job] = broker.lease("w", 1, 30)
        lanes.append(job.lane)
    assert lanes.count(Lane.BULK) == 2  # weights 8:1 over 18 slots


def test_weights_are_configurable(broker_url: str, clock: ManualClock) -> None:
    weights = dict(DEFAULT_WEIGHTS) | {Lane.STANDARD: 1, Lane.BULK: 1}
    with open_broker(broker_url, BrokerOptions(lane_weights=weights), clock) as broker:
        enqueue(broker, Lane.STANDARD, 20)
        enqueue(broker, Lane.BULK, 20)
        jobs = broker.lease("w", 20, 30)
        assert sum(j.lane == Lane.BULK for j in jobs) == 10


# -- leases, settling and fencing -----------------------------------------------------------
def test_a_leased_message_is_not_leased_again_while_its_lease_lives(
    broker: Broker, clock: ManualClock
) -> None:
    enqueue(broker, n=5)
    first = broker.lease("w1", 3, 30)
    second = broker.lease("w2", 10, 30)
    assert len(first) == 3 and len(second) == 2
    assert not {j.id for j in first} & {j.id for j in second}
    clock.advance(29)
    assert broker.reap_expired() == 0
    assert broker.lease("w3", 10, 30) == []


def test_an_expired_lease_returns_the_message_and_fences_the_old_holder(
    broker: Broker, clock: ManualClock
) -> None:
    [message_id] = enqueue(broker)
    [old] = broker.lease("slow-worker", 1, 10)
    clock.advance(10)
    assert broker.reap_expired() == 1
    assert state_of(broker, message_id) == State.QUEUED
    [new] = broker.lease("fast-worker", 1, 10)
    assert (new.id, new.attempts) == (message_id, 2)
    assert new.token != old.token
    assert broker.complete([old]) == []  # the stale holder may not settle it
    assert broker.heartbeat([old], 60) == []
    assert state_of(broker, message_id) == State.LEASED
    assert broker.complete([new]) == [message_id]
    assert state_of(broker, message_id) == State.SENT


def test_heartbeat_keeps_a_slow_send_leased(broker: Broker, clock: ManualClock) -> None:
    enqueue(broker, n=2)
    jobs = broker.lease("w", 2, 10)
    clock.advance(8)
    assert sorted(broker.heartbeat(jobs, 10)) == sorted(j.id for j in jobs)
    clock.advance(8)
    assert broker.reap_expired() == 0
    clock.advance(2)
    assert broker.reap_expired() == 2


def test_settle_applies_a_mixed_batch(broker: Broker, clock: ManualClock) -> None:
    ids = enqueue(broker, n=3)
    sent, retried, buried = broker.lease("w", 3, 30)
    done = broker.settle([
        Outcome(sent, Action.COMPLETE),
        Outcome(retried, Action.RETRY, delay=60, error="451 try later"),
        Outcome(buried, Action.BURY, error="550 no such user"),
    ])  # fmt: skip
    assert sorted(done) == sorted(ids)
    assert state_of(broker, sent.id) == State.SENT
    info = broker.get(retried.id)
    assert info is not None
    assert (info.state, info.last_error, info.available_at) == (
        State.RETRYING, "451 try later", clock() + 60,
    )  # fmt: skip
    dead = broker.get(buried.id)
    assert dead is not None and (dead.state, dead.last_error) == (State.DEAD, "550 no such user")
    assert broker.settle([Outcome(sent, Action.COMPLETE)]) == []  # settling twice is harmless


def test_a_partial_delivery_retries_only_the_recipients_left(
    broker: Broker, clock: ManualClock
) -> None:
    (message_id,) = enqueue(broker, n=1)
    (job,) = broker.lease("w", 1, 30)
    assert job.recipients is None  # every recipient, the first time
    left = ("later@b.example", "busy@c.example")
    retried = Outcome(job, Action.RETRY, delay=60, error="451 for now", recipients=left)
    assert broker.settle([retried]) == [message_id]
    clock.advance(61)
    (again,) = broker.lease("w", 1, 30)
    assert again.recipients == left
    # A retry that says nothing of recipients keeps those left.
    broker.settle([Outcome(again, Action.RETRY, delay=60, error="451 again")])
    clock.advance(61)
    (third,) = broker.lease("w", 1, 30)
    assert third.recipients == left


def test_a_completion_keeps_its_note_of_recipients_refused_for_good(broker: Broker) -> None:
    enqueue(broker, n=2)
    first, second = broker.lease("w", 2, 30)
    note = "refused by 1 recipients: g***@b.example: 550 no such user"
    broker.settle([Outcome(first, Action.COMPLETE), Outcome(second, Action.COMPLETE, error=note)])
    infos = [broker.get(job.id) for job in (first, second)]
    assert [(i.state, i.last_error) for i in infos if i] == [(State.SENT, None), (State.SENT, note)]


def test_release_returns_mail_unsent_without_spending_an_attempt(broker: Broker) -> None:
    first, second = enqueue(broker, n=2)
    jobs = broker.lease("stopping-worker", 2, 30)
    assert sorted(broker.release(jobs)) == sorted([first, second])
    again = broker.lease("w", 2, 30)
    assert [j.id for j in again] == [first, second]  # back in their places, in order
    assert {j.attempts for j in again} == {1}
    assert broker.release(jobs) == []  # the old lease is stale


def test_defer_waits_its_delay_gives_the_attempt_back_and_never_buries_for_count(
    broker: Broker, clock: ManualClock
) -> None:
    [message_id] = enqueue(broker, max_attempts=1, expires_at=clock() + 3600)
    for _ in range(5):  # the provider is down: five deferrals spend none of its one attempt
        [job] = broker.lease("w", 1, 30)
        assert job.attempts == 1
        assert broker.defer([job], 60, "provider down: connection refused") == [message_id]
        info = broker.get(message_id)
        assert info is not None and (info.state, info.attempts, info.available_at) == (
            State.RETRYING, 0, clock() + 60,
        )  # fmt: skip
        assert broker.lease("w", 1, 30) == []
        clock.advance(60)
    [job] = broker.lease("w", 1, 30)
    assert broker.defer([job], 10) == [message_id]  # no error given: the last one stays
    assert broker.get(message_id).last_error == "provider down: connection refused"  # type: ignore[union-attr]
    assert broker.defer([job], 10) == []  # settled already: the lease is gone
    clock.advance(10)
    [job] = broker.lease("w", 1, 30)
    assert broker.defer([job], 3600, "rate limited") == [message_id]  # due past expiry
    info = broker.get(message_id)
    assert info is not None and (info.state, info.attempts, info.last_error) == (
        State.DEAD, 0, "expired before it could be sent; last error: rate limited",
    )  # fmt: skip


def test_retry_waits_its_delay_then_the_last_attempt_is_buried(
    broker: Broker, clock: ManualClock
) -> None:
    [message_id] = enqueue(broker, max_attempts=2)
    [job] = broker.lease("w", 1, 30)
    assert broker.retry(job, 30, "421 busy")
    assert broker.lease("w", 1, 30) == []
    clock.advance(30)
    [job] = broker.lease("w", 1, 30)
    assert job.attempts == 2 and job.last_attempt
    assert broker.retry(job, 30, "421 still busy")
    info = broker.get(message_id)
    assert info is not None and (info.state, info.last_error) == (
        State.DEAD, "gave up after 2 attempts over 30 seconds: 421 still busy",
    )  # fmt: skip


# -- retrying like an MTA: by age ----------------------------------------------------------
def test_each_lane_expires_after_its_maximum_age_from_when_it_is_first_due(
    broker_url: str, clock: ManualClock
) -> None:
    with open_broker(broker_url, clock=clock) as broker:
        for lane in Lane:
            [message_id] = enqueue(broker, lane)
            info = broker.get(message_id)
            assert info is not None and info.expires_at == clock() + DEFAULT_MAX_AGE[lane]
            assert info.max_attempts is None
        [later] = enqueue(broker, Lane.CRITICAL, send_at=clock() + 7 * 86400)
        assert broker.get(later).expires_at == clock() + 8 * 86400  # type: ignore[union-attr]
        [given] = enqueue(broker, expires_at=clock() + 60)
        assert broker.get(given).expires_at == clock() + 60  # type: ignore[union-attr]
    ages = dict.fromkeys(Lane, 3600.0) | {Lane.BULK: 7200.0}
    with open_broker(broker_url, BrokerOptions(max_age=ages), clock) as broker:
        [bulk] = enqueue(broker, Lane.BULK)
        assert broker.get(bulk).expires_at == clock() + 7200  # type: ignore[union-attr]


def test_without_max_attempts_mail_is_retried_until_it_would_expire(
    broker: Broker, clock: ManualClock
) -> None:
    expires_at = clock() + 3600
    [message_id] = enqueue(broker, expires_at=expires_at)
    for attempt in range(1, 21):  # far more than any count limit would allow
        [job] = broker.lease("w", 1, 30)
        assert (job.attempts, job.last_attempt, job.expires_at) == (attempt, False, expires_at)
        assert isinstance(job.expires_at, float)
        assert broker.retry(job, 60, "451 greylisted")
        assert state_of(broker, message_id) == State.RETRYING
        clock.advance(60)
    clock.advance(3600 - 20 * 60 - 30)  # 30 s before it expires: a 60 s wait is too long
    [job] = broker.lease("w", 1, 30)
    assert broker.retry(job, 60, "451 greylisted")
    info = broker.get(message_id)
    assert info is not None and (info.state, info.last_error) == (
        State.DEAD, "gave up after 21 attempts over 60 minutes: 451 greylisted",
    )  # fmt: skip


def test_a_lease_buries_mail_past_its_expiry_instead_of_sending_it_late(
    broker: Broker, clock: ManualClock
) -> None:
    [stale, retried] = enqueue(broker, Lane.CRITICAL, n=2, expires_at=clock() + 60)
    [fresh] = enqueue(broker, Lane.CRITICAL)
    jobs = {job.id: job for job in broker.lease("w", 3, 30)}
    broker.settle([
        Outcome(jobs[stale], Action.RELEASE),
        Outcome(jobs[retried], Action.RETRY, error="421 busy"),
        Outcome(jobs[fresh], Action.RELEASE),
    ])  # fmt: skip
    clock.advance(60)
    assert [job.id for job in broker.lease("w", 10, 30)] == [fresh]
    expected = {
        stale: (State.DEAD, 0, "expired before it could be sent"),
        retried: (State.DEAD, 1, "expired before it could be sent; last error: 421 busy"),
    }
    for message_id, (state, attempts, error) in expected.items():
        info = broker.get(message_id)
        assert info is not None and (info.state, info.attempts, info.last_error) == (
            state, attempts, error,
        )  # fmt: skip
    assert broker.stats().count(State.DEAD, Lane.CRITICAL) == 2


def test_reap_buries_only_past_expiry_or_spent_explicit_attempts(
    broker: Broker, clock: ManualClock
) -> None:
    [unlimited] = enqueue(broker, expires_at=clock() + 1000)
    for _ in range(8):  # a worker keeps dying mid-send: retried by age, not count
        broker.lease("crashing-worker", 1, 10)
        clock.advance(10)
        assert broker.reap_expired() == 1
        assert state_of(broker, unlimited) == State.QUEUED
    clock.advance(1000)
    broker.lease("w", 1, 10)  # leased past expiry? no: buried by the lease itself
    assert state_of(broker, unlimited) == State.DEAD
    [late] = enqueue(broker, expires_at=clock() + 5)
    broker.lease("crashing-worker", 1, 10)
    clock.advance(10)
    assert broker.reap_expired() == 1
    info = broker.get(late)
    assert info is not None and (info.state, info.last_error) == (
        State.DEAD, "gave up after 1 attempt over 10 seconds: lease expired on attempt 1",
    )  # fmt: skip


def test_a_lease_that_expires_on_the_last_attempt_is_buried(
    broker: Broker, clock: ManualClock
) -> None:
    [message_id] = enqueue(broker, max_attempts=1)
    broker.lease("crashing-worker", 1, 5)
    clock.advance(5)
    assert broker.reap_expired() == 1
    info = broker.get(message_id)
    assert info is not None and info.state == State.DEAD
    assert info.last_error and "lease expired" in info.last_error


def test_requeue_dead_gives_fresh_attempts_and_a_fresh_expiry(
    broker: Broker, clock: ManualClock
) -> None:
    ids = enqueue(broker, n=3, max_attempts=1)
    for job in broker.lease("w", 3, 30):
        broker.bury(job, "550 rejected")
    clock.advance(10 * 86400)  # long past their first expiry: requeued mail gets a new one
    assert broker.requeue_dead([ids[0]]) == 1
    assert broker.requeue_dead([]) == 0
    [job] = broker.lease("w", 3, 30)
    assert (job.id, job.attempts) == (ids[0], 1)
    assert job.expires_at == clock() + DEFAULT_MAX_AGE[Lane.STANDARD]
    assert broker.requeue_dead() == 2
    assert broker.stats().count(State.DEAD) == 0


def test_requeue_dead_picks_by_id_since_lane_and_tenant(broker: Broker, clock: ManualClock) -> None:
    [early] = enqueue(broker, Lane.STANDARD, tenant="acme", max_attempts=1)
    [bulk] = enqueue(broker, Lane.BULK, tenant="acme", max_attempts=1)
    [other] = enqueue(broker, Lane.STANDARD, tenant="globex", max_attempts=1)
    jobs = {job.id: job for job in broker.lease("w", 3, 30)}
    broker.bury(jobs[early], "550")
    died_early = clock()
    clock.advance(3600)
    broker.settle([Outcome(jobs[bulk], Action.BURY), Outcome(jobs[other], Action.BURY)])
    assert broker.requeue_dead(lane=Lane.BULK, since=died_early + 1) == 1
    assert state_of(broker, bulk) == State.QUEUED
    assert broker.requeue_dead(tenant="globex", lane=Lane.BULK) == 0
    assert broker.requeue_dead([early], since=died_early + 1) == 0  # it died before that
    assert broker.requeue_dead([early, other], tenant="acme") == 1
    assert (state_of(broker, early), state_of(broker, other)) == (State.QUEUED, State.DEAD)
    assert broker.requeue_dead(since=died_early) == 1
    assert broker.stats().count(State.DEAD) == 0


def test_requeue_dead_takes_the_longest_dead_first(broker: Broker, clock: ManualClock) -> None:
    ids = enqueue(broker, n=3, max_attempts=1)
    for job in broker.lease("w", 3, 30)[::-1]:  # the last one enqueued dies first
        broker.bury(job, "550")
        clock.advance(1)
    assert broker.requeue_dead(limit=2) == 2
    assert state_of(broker, ids[0]) == State.DEAD


def test_cancel_only_what_no_worker_holds(broker: Broker, clock: ManualClock) -> None:
    queued, leased, scheduled = enqueue(broker, n=2) + enqueue(broker, send_at=clock() + 60)
    [job] = broker.lease("w", 1, 30)
    assert job.id == queued
    assert broker.cancel(leased) is True
    assert broker.cancel(scheduled) is True
    assert broker.cancel(queued) is False  # leased: the worker may be sending it now
    assert broker.cancel(leased) is False  # already cancelled
    assert broker.cancel("unknown") is False
    clock.advance(60)
    assert broker.lease("w", 10, 30) == []
    assert state_of(broker, scheduled) == State.CANCELLED


# -- reads and housekeeping -----------------------------------------------------------------
def test_stats_count_each_lane_and_state_and_the_oldest_age(
    broker: Broker, clock: ManualClock
) -> None:
    enqueue(broker, Lane.BULK, 4)
    clock.advance(30)
    enqueue(broker, Lane.CRITICAL, 2)
    enqueue(broker, Lane.STANDARD, 1, send_at=clock() + 100)
    clock.advance(10)
    [critical, _] = broker.lease("w", 2, 30)
    broker.complete([critical])
    stats = broker.stats()
    bulk = stats.lanes[Lane.BULK]
    assert bulk.counts[State.QUEUED] == 4 and bulk.oldest_age == 40
    assert stats.lanes[Lane.CRITICAL].counts[State.LEASED] == 1
    assert stats.lanes[Lane.CRITICAL].counts[State.SENT] == 1
    assert stats.lanes[Lane.CRITICAL].oldest_age == 0
    assert stats.count(State.SCHEDULED, Lane.STANDARD) == 1
    assert stats.backlog == 6
    assert set(stats.lanes) == set(LANE_ORDER)


def test_the_oldest_age_a_tenant_sees_is_of_its_own_mail(
    broker: Broker, clock: ManualClock
) -> None:
    [acme_old] = enqueue(broker, Lane.BULK, tenant="acme")
    clock.advance(30)
    enqueue(broker, Lane.BULK, 2, tenant="zeta")
    enqueue(broker, Lane.STANDARD, tenant="zeta")
    clock.advance(10)

    def ages(tenant: str | None) -> tuple[float, float]:
        lanes = broker.stats(tenant).lanes
        return lanes[Lane.BULK].oldest_age, lanes[Lane.STANDARD].oldest_age

    assert (ages(None), ages("acme"), ages("zeta")) == ((40, 10), (40, 0), (10, 10))
    [job] = broker.lease("w", 1, 30, lanes=[Lane.BULK])  # the lane's oldest: acme's
    assert job.id == acme_old
    assert (ages(None), ages("acme"), ages("zeta")) == ((10, 10), (0, 0), (10, 10))
    broker.settle([Outcome(job, Action.RELEASE)])  # back at its place in the lane
    assert (ages(None), ages("acme"), ages("zeta")) == ((40, 10), (40, 0), (10, 10))
    broker.cancel(acme_old)
    assert ages("acme") == (0, 0)


def test_purge_expired_drops_final_records_after_retention(
    broker_url: str, clock: ManualClock
) -> None:
    with open_broker(broker_url, BrokerOptions(retention=3600), clock) as broker:
        kept, dropped = enqueue(broker, n=2)
        jobs = {j.id: j for j in broker.lease("w", 2, 30)}
        broker.complete([jobs[dropped]])
        clock.advance(3601)
        broker.purge_expired()
        assert broker.get(dropped) is None
        assert broker.get(kept) is not None  # still leased: never purged


def test_now_is_the_brokers_clock(broker: Broker, clock: ManualClock) -> None:
    assert broker.now() == clock()
    clock.advance(12.5)
    [message_id] = enqueue(broker)
    info = broker.get(message_id)
    assert info is not None and info.enqueued_at == broker.now() == clock()


def test_ping_answers_and_can_be_asked_again_and_again(broker: Broker) -> None:
    # more pings than redis-py's pool holds connections: a probe must not use them up
    assert all(broker.ping() for _ in range(150))
    assert broker.enqueue_many([NewMessage(b"after the probes")]) != []


def test_check_finds_nothing_wrong_with_a_healthy_broker(broker: Broker) -> None:
    assert broker.check() is None


def test_lease_arguments_are_checked(broker: Broker) -> None:
    with pytest.raises(ValueError, match="max_n"):
        broker.lease("w", 0, 30)
    with pytest.raises(ValueError, match="lease_s"):
        broker.lease("w", 1, 0)
    with pytest.raises(ValueError, match="request_id"):
        broker.lease("w", 1, 30, request_id="")
    enqueue(broker)
    assert len(broker.lease("w", 1, 30, request_id="batch-7")) == 1  # every backend takes one


def test_a_lease_can_be_limited_to_some_lanes(broker: Broker) -> None:
    enqueue(broker, Lane.BULK, 5)
    critical = enqueue(broker, Lane.CRITICAL, 2)
    assert [j.id for j in broker.lease("express", 10, 30, lanes=[Lane.CRITICAL])] == critical
    assert broker.lease("express", 10, 30, lanes=[Lane.CRITICAL]) == []
    assert len(broker.lease("w", 10, 30, lanes=[Lane.BULK, Lane.STANDARD])) == 5
    with pytest.raises(ValueError, match="at least one lane"):
        broker.lease("w", 1, 30, lanes=[])


def test_stats_of_one_tenant_count_its_messages_only_through_every_change(
    broker: Broker, clock: ManualClock
) -> None:
    def tenant_mail(tenant: str, **kw: object) -> list[str]:
        new = [NewMessage(PAYLOAD, lane=lane, tenant=tenant, **kw) for lane in LANE_ORDER]  # type: ignore[arg-type]
        return broker.enqueue_many(new)

    ids = {t: tenant_mail(t, max_attempts=2) + tenant_mail(t, send_at=clock() + 30)
           for t in ("acme", "zeta")}  # fmt: skip
    ids["acme"] += tenant_mail("acme", expires_at=clock() + 5)  # buried by a lease, unsent
    broker.cancel(ids["acme"][4])
    jobs = broker.lease("w", 8, 10)
    actions = [Action.COMPLETE, Action.BURY, Action.RETRY, Action.RELEASE, Action.DEFER]
    broker.settle([Outcome(job, actions[i % 5], delay=1, error="x") for i, job in enumerate(jobs)])
    clock.advance(6)
    broker.lease("w", 20, 10)  # buries the expired, leases the rest
    clock.advance(30)
    broker.reap_expired()
    broker.promote_due()
    broker.requeue_dead(tenant="zeta")
    expected_totals = broker.stats()

    def assert_tenants_agree() -> None:
        per_tenant = {t: broker.stats(t) for t in ids}
        for tenant, stats in per_tenant.items():
            states = [info.state for info in map(broker.get, ids[tenant]) if info is not None]
            for state in State:
                assert stats.count(state) == states.count(state), (tenant, state)
        for state in State:
            assert sum(s.count(state) for s in per_tenant.values()) == broker.stats().count(state)
        assert broker.stats("nobody").backlog == 0
        for tenant, stats in per_tenant.items():  # each lane's oldest ready age: its own mail's
            infos = [info for info in map(broker.get, ids[tenant]) if info is not None]
            for lane in LANE_ORDER:
                ready = [
                    i.available_at for i in infos if i.lane == lane and i.state == State.QUEUED
                ]
                oldest = stats.taken_at - min(ready) if ready else 0.0
                assert stats.lanes[lane].oldest_age == pytest.approx(oldest, abs=0.001), (
                    tenant,
                    lane,
                )

    assert_tenants_agree()
    assert expected_totals.backlog > 0
    clock.advance(broker.options.retention + 60)
    assert broker.purge_expired() > 0
    assert_tenants_agree()
