"""Payloads sealed at rest: no body in the broker, key rotation, a missing key waits."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from emailq.broker import Broker, State
from emailq.clock import ManualClock
from emailq.deployment import Deployment
from emailq.privacy.audit import Kind
from emailq.privacy.sealing import Sealer, is_sealed, sealed_with
from emailq.settings import Settings
from emailq.sink import SinkHandler, SmtpSink
from faults import deliver
from stores import dump

BODY = "The vows are at 4 pm under the old oak"
K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K2 = "k2:" + base64.b64encode(b"2" * 32).decode()


def opened(url: str, keys: str, clock: ManualClock | None = None) -> Deployment:
    settings = Settings(broker={"url": url}, encryption_keys=keys)
    return Deployment(settings, clock=clock) if clock else Deployment(settings)


def send(deployment: Deployment, n: int = 3) -> list[str]:
    emails = [{"from": "planner@weddings.example", "to": f"guest{i}@example.org",
               "subject": "Ceremony", "text": f"{BODY} #{i}"} for i in range(n)]  # fmt: skip
    return [queued.id for queued in deployment.send_many(emails)]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(handler=SinkHandler(keep_data=True)) as server:
        yield server


def test_a_sealed_queue_holds_no_body_and_still_delivers(broker_url: str, sink: SmtpSink) -> None:
    with opened(broker_url, K1) as deployment:
        ids = send(deployment)
        assert BODY.encode() not in dump(deployment.broker)  # sealed while queued
        deliver(deployment.broker, sink.port)
        assert all(deployment.broker.get(i).state is State.SENT for i in ids)  # type: ignore[union-attr]
        assert BODY.encode() not in dump(deployment.broker)
    received = b"".join(sink.handler.data.values())
    assert received.count(BODY.encode()) == 3


def all_payloads(broker: Broker) -> list[tuple[str, bytes]]:
    """Every stored payload, page by page (a shared Redis holds other tests' keys too)."""
    cursor, found = "", []
    while True:
        cursor, page = broker._stored_payloads(cursor, 1000)
        found += page
        if not cursor:
            return found


def test_rotate_keys_reseals_every_payload_with_the_new_key(
    broker_url: str, sink: SmtpSink
) -> None:
    with opened(broker_url, K1) as old:
        ids = send(old)
    with opened(broker_url, f"{K2},{K1}") as both:
        assert both.broker.reseal() == 3
        assert both.broker.reseal() == 0  # nothing left to re-seal
        stored = all_payloads(both.broker)
        assert {sealed_with(p) for _, p in stored} == {"k2"} and all(
            is_sealed(p) for _, p in stored
        )
    with opened(broker_url, K2) as new:  # the old key is gone: everything still opens
        deliver(new.broker, sink.port)
        assert all(new.broker.get(i).state is State.SENT for i in ids)  # type: ignore[union-attr]


def test_mail_sealed_with_a_missing_key_waits_then_goes_when_it_is_back(
    broker_url: str, sink: SmtpSink, clock: ManualClock
) -> None:
    with opened(broker_url, K1, clock) as before:
        [message_id] = send(before, 1)
    with opened(broker_url, K2, clock) as without:
        assert without.broker.lease("w1", 10, 30) == []
        info = without.broker.get(message_id)
        assert info is not None and info.state is State.RETRYING
        assert "'k1'" in (info.last_error or "") and info.attempts == 0
        assert without.broker.events(message_id)[-1].kind is Kind.DEFERRED
    clock.advance(61)
    with opened(broker_url, f"{K2},{K1}", clock) as back:
        deliver(back.broker, sink.port)
        assert back.broker.get(message_id).state is State.SENT  # type: ignore[union-attr]


def test_a_sealer_refuses_a_tampered_payload() -> None:
    sealer = Sealer.from_text(K1)
    sealed = bytearray(sealer.seal(b"hello"))
    assert sealer.open(bytes(sealed)) == b"hello"
    sealed[-1] ^= 1
    with pytest.raises(ValueError, match="does not open"):
        sealer.open(bytes(sealed))


def test_a_key_of_the_wrong_length_stops_start_up_naming_the_setting(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    env["EMAILQ_ENCRYPTION_KEYS"] = "k1:" + base64.b64encode(b"short").decode()
    done = subprocess.run(
        [sys.executable, "-m", "emailq", "status", "--broker-url", f"sqlite:///{tmp_path}/q.db"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "encryption_keys (env EMAILQ_ENCRYPTION_KEYS)" in done.stderr
    assert "32 bytes" in done.stderr and "c2hvcnQ" not in done.stderr  # the key is not shown
