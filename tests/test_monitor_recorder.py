"""What a worker records: latency from acceptance or send_at, outcomes counted per lane
and tenant, rate-limit pacing not counted as failure; payload facts read without parsing."""

from __future__ import annotations

from datetime import UTC, datetime

from emailq.broker import Action, Outcome
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.monitor import facts
from emailq.monitor.recorder import Recorder
from monitoring import outcome


def payload(**fields: object) -> bytes:
    base = {"from": "a@x.example", "to": "b@y.example", "subject": "Hi", "text": "Hello"}
    return parse_email(base | fields).to_payload()


def test_facts_from_real_payloads() -> None:
    wedding = {"wedding_id": 'w"42', "kind": "ceremony_change",
               "ceremony_at": "2030-06-13T16:00:00+02:00"}  # fmt: skip
    send_at = "2030-06-01T09:00:00+02:00"
    raw = payload(wedding=wedding, send_at=send_at, tags={"wedding_id": "tag"})
    assert facts.wedding_id(raw) == 'w"42'
    assert facts.send_at(raw) == datetime.fromisoformat(send_at).timestamp()
    only_tag = payload(tags={"wedding_id": "tag"}, text='"send_at":"soon"')
    assert facts.wedding_id(only_tag) is None  # a tag is not the wedding
    assert facts.send_at(only_tag) is None  # nor is a body that mentions it


def test_counts_latency_and_pacing() -> None:
    now = 1_800_000_000.0
    recorder = Recorder("w", "smtp", lambda: now)
    scheduled = payload(send_at=datetime.fromtimestamp(now - 2, UTC).isoformat())
    recorder.record([
        outcome(Lane.CRITICAL, now - 0.5),
        outcome(Lane.CRITICAL, now - 3600, payload=scheduled),  # queued an hour, due 2 s ago
        outcome(Lane.CRITICAL, now, Action.BURY),
        outcome(Lane.BULK, now, Action.RETRY, tenant="acme"),
    ])  # fmt: skip
    paced = outcome(Lane.BULK, now, Action.DEFER, tenant="acme")
    down = outcome(Lane.BULK, now, Action.DEFER, tenant="acme")
    recorder.record([Outcome(paced.job, Action.DEFER, error="rate limited"),
                     Outcome(down.job, Action.DEFER, error="connection refused")])  # fmt: skip
    window = recorder.take()
    critical = window.cells[("critical", "default")]
    assert (critical.sent, critical.failed) == (2, 1)
    assert critical.latency.quantile(1.0) is not None
    assert critical.latency.quantile(1.0) < 2.1  # from send_at, not from the enqueue
    bulk = window.cells[("bulk", "acme")]
    assert (bulk.retried, bulk.deferred) == (1, 1)  # pacing is not a failure
    assert recorder.take().cells == {}
