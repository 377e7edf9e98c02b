"""Two ``emailq worker`` processes on one Redis queue switch providers together: the
health state lives in the broker, so one process's breaker or checks move the fleet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import redis_url_with_prefix, require_redis
from emailq.broker import State, open_broker
from emailq.deployment import Deployment
from emailq.sink import SmtpSink
from faults import copies, fill, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
def test_two_worker_processes_fail_over_together_with_nothing_lost(tmp_path: Path) -> None:
    require_redis()
    url = redis_url_with_prefix(f"emailq-test-{uuid.uuid4().hex}")
    primary, secondary = SmtpSink().start(), SmtpSink().start()
    chain = [f"smtp://127.0.0.1:{s.port}?pool=4&timeout=5" for s in (primary, secondary)]
    env = os.environ | {
        "EMAILQ_PROVIDER_CHECK_INTERVAL_S": "1",
        "EMAILQ_PROVIDER_FAILBACK_S": "600",
        "EMAILQ_WORKER_RETRY_BASE_S": "0.2",
        "EMAILQ_CONFIG": "",
    }
    logs = [tmp_path / f"worker{n}.log" for n in range(2)]
    workers = []
    for log in logs:
        with log.open("wb") as stderr:  # the child keeps its own copy
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "emailq", "worker", "--broker-url", url,
                 "--provider-url", chain[0], "--provider-url", chain[1]],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            ))  # fmt: skip
    try:
        with open_broker(url) as broker:
            ids = fill(broker, 20_000)  # the run: the primary killed in the middle
            wait_until(lambda: primary.count >= 8_000, 120, "the primary to take mail")
            stopped_at = time.monotonic()
            primary.stop()
            wait_until(lambda: secondary.count > 0, 10, "the secondary to take mail")
            switched_in = time.monotonic() - stopped_at
            wait_until(lambda: broker.stats().count(State.SENT) == len(ids), 300, "every message")
            assert broker.stats().count(State.DEAD) == 0
        seen: Counter[str] = copies(primary) + copies(secondary)
        print(f"\nfleet switched {switched_in:.2f} s after the primary stopped;"
              f" primary {primary.count}, secondary {secondary.count}")  # fmt: skip
        assert set(seen) == set(ids)
        assert [m for m, n in seen.items() if n > 1] == []
        # Both processes now send through the secondary, and say so.
        for log in logs:
            wait_until(lambda log=log: "now sends through" in log.read_text(), 10,  # type: ignore[misc]
                       f"{log.name} to switch")  # fmt: skip
        with Deployment.from_url(url, provider={"url": ",".join(chain)}) as d:
            assert [p.state for p in d.providers()] == ["down", "active"]
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
        secondary.stop()
        with open_broker(url) as leftover:
            leftover.purge()
