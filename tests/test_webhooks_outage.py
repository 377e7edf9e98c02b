"""A receiver down for 60 s (issue 16): mail is delivered at the same rate meanwhile, and
every event reaches the receiver once it is back. ``emailq webhooks`` runs as its own
process, as in production; the figures are printed, not asserted (they are timings)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import redis_url_with_prefix, require_redis
from deployments import deployment_for
from emailq.broker import NewMessage
from emailq.message import parse_email
from emailq.sink import SmtpSink
from emailq.webhooks.signing import new_secret
from emailq.webhooks.store import Endpoint
from test_batches import deliver
from webhook_receiver import running_receiver

pytestmark = pytest.mark.slow
N = 3000
DOWN_S = 60.0


def mail(n: int) -> list[NewMessage]:
    payload = parse_email({"from": "a@weddings.example", "to": "guest@example.org",
                           "subject": "Hi", "text": "x" * 1000}).to_payload()  # fmt: skip
    return [NewMessage(payload, tenant="acme") for _ in range(n)]


def test_mail_keeps_its_rate_while_the_receiver_is_down_and_events_follow() -> None:
    require_redis()
    url = redis_url_with_prefix(f"emailq-test-{uuid.uuid4().hex}")
    env = os.environ | {
        "EMAILQ_BROKER_URL": url, "EMAILQ_WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
        "EMAILQ_WEBHOOKS_RETRY_BASE_S": "1", "EMAILQ_WEBHOOKS_POLL_S": "0.2",
    }  # fmt: skip
    with deployment_for(url) as deployment, running_receiver() as receiver, SmtpSink() as sink:
        try:

            def drain() -> float:
                deployment.broker.enqueue_many(mail(N))
                started = time.perf_counter()
                asyncio.run(deliver(deployment.broker, sink.port))
                return N / (time.perf_counter() - started) * 60

            alone = drain()  # no webhooks at all
            receiver.secret = new_secret()
            deployment.webhooks.add_endpoint(Endpoint(
                id="wh_outage", tenant="acme", url=receiver.url, events=("email.sent",),
                secret=receiver.secret, created_at=time.time()))  # fmt: skip
            receiver.status = 503
            hooks = subprocess.Popen([sys.executable, "-m", "emailq", "webhooks"], env=env,
                                     stdout=subprocess.DEVNULL)  # fmt: skip
            down_at = time.monotonic()
            beside = drain()  # every event fails meanwhile, and is retried
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
            tried = receiver.requests
            receiver.status = 200
            back_at = time.monotonic()
            assert receiver.wait_for(N, timeout=180)
            caught_up = time.monotonic() - back_at
            hooks.send_signal(signal.SIGTERM)
            assert hooks.wait(30) == 0
        finally:
            deployment.broker.purge()
    print(f"\nmail alone {alone:,.0f}/min; beside a failing receiver {beside:,.0f}/min"
          f" ({beside / alone:.0%}); {tried:,} requests to it in {DOWN_S:.0f} s down;"
          f" all {N:,} events delivered {caught_up:.1f} s after it was back")  # fmt: skip
    assert receiver.bad_signatures == 0 and len(receiver.events) == N
    assert 0 < tried < N  # probed while it was down, not hammered: the receiver was paused
