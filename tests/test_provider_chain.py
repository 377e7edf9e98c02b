"""The provider chain, end to end: two real SMTP sinks, a real queue, a running worker.

The primary stops under load → mail flows through the secondary (breaker or checks);
the primary comes back → traffic returns after the failback period; refused credentials
fail over at once with an alert. Nothing lost, nothing dead, nothing sent twice: every
Message-ID is counted at both sinks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from emailq.broker import State
from emailq.deployment import Deployment
from emailq.sink import SinkHandler, SmtpSink, free_port
from emailq.worker import Worker
from faults import copies, fill, wait_until

FAST = {"check_interval_s": 0.5, "check_timeout_s": 2, "fail_after_checks": 3,
        "breaker_failures": 5, "breaker_window_s": 5}  # fmt: skip


def chain(*ports: int) -> str:
    return ",".join(f"smtp://127.0.0.1:{port}?pool=4&timeout=5" for port in ports)


@contextmanager
def running_worker(deployment: Deployment) -> Iterator[Worker]:
    """A worker (both loops, a chain each) delivering on a thread of its own until the end."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    provider, express = deployment.open_provider(), deployment.open_provider()
    worker = Worker(deployment.broker, provider, deployment.worker_settings(),
                    express_provider=express)  # fmt: skip

    async def main() -> None:
        try:
            await worker.run(stop)
        finally:
            await provider.close()
            await express.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()


def open_deployment(tmp_path: Path, url: str, **provider: Any) -> Deployment:
    return Deployment.from_url(
        f"sqlite:///{tmp_path}/queue.db",
        provider={"url": url, **FAST, **provider},
        worker={"retry_base_s": 0.2, "lease_s": 10},
    )


def sent_once(ids: list[str], *sinks: SmtpSink) -> Counter[str]:
    seen: Counter[str] = Counter()
    for sink in sinks:
        seen += copies(sink)
    return seen


def test_primary_stopped_under_load_fails_over_with_nothing_lost_or_doubled(
    tmp_path: Path,
) -> None:
    primary, secondary = SmtpSink().start(), SmtpSink().start()
    with open_deployment(tmp_path, chain(primary.port, secondary.port), failback_s=600) as d:
        ids = fill(d.broker, 2000)
        with running_worker(d):
            wait_until(lambda: primary.count >= 300, 30, "the primary to take mail")
            stopped_at = time.monotonic()
            primary.stop()
            wait_until(lambda: secondary.count > 0, 10, "the secondary to take mail")
            switched_in = time.monotonic() - stopped_at
            wait_until(lambda: d.status().count(State.SENT) == len(ids), 60, "every message")
            states = {p.name: p.state for p in d.providers()}
        seen = sent_once(ids, primary, secondary)
        print(f"\nswitched to the secondary {switched_in:.2f} s after the primary stopped;"
              f" primary {primary.count}, secondary {secondary.count}")  # fmt: skip
        assert set(seen) == set(ids)  # 0 lost
        assert [m for m, n in seen.items() if n > 1] == []  # 0 duplicates
        assert d.status().count(State.DEAD) == 0
        assert switched_in < 3 * FAST["check_interval_s"] + 1
        assert list(states.values()) == ["down", "active"]
    secondary.stop()


def test_traffic_returns_to_the_primary_after_the_failback_period(tmp_path: Path) -> None:
    port = free_port()
    primary, secondary = SmtpSink(port=port).start(), SmtpSink().start()
    with open_deployment(tmp_path, chain(port, secondary.port), failback_s=2) as d:
        primary.stop()
        with running_worker(d):
            wait_until(lambda: [p.state for p in d.providers()] == ["down", "active"], 10,
                       "the primary to be found down")  # fmt: skip
            fill(d.broker, 50)
            wait_until(lambda: secondary.count == 50, 20, "mail through the secondary")
            primary = SmtpSink(port=port).start()
            back_at = time.monotonic()
            wait_until(lambda: d.providers()[0].state == "active", 10, "failback")
            back_in = time.monotonic() - back_at
            fill(d.broker, 50)
            wait_until(lambda: primary.count == 50, 20, "mail through the primary again")
        print(f"\nfailback {back_in:.2f} s after the primary came back (failback_s=2)")
        assert back_in >= 2
        assert secondary.count == 50
    primary.stop()
    secondary.stop()


def refuse_login(*_: Any) -> AuthResult:
    return AuthResult(success=False, handled=False)


def test_refused_credentials_fail_over_at_once_with_an_alert_and_no_dead_mail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    refusing = Controller(SinkHandler(), hostname="127.0.0.1", port=port,
                          auth_require_tls=False, authenticator=refuse_login)  # fmt: skip
    refusing.start()
    secondary = SmtpSink().start()
    url = f"smtp://u:wrong@127.0.0.1:{port}?auth=plaintext,{chain(secondary.port)}"
    try:
        with open_deployment(tmp_path, url, check_interval_s=30, failback_s=600) as d:
            ids = fill(d.broker, 200)
            with running_worker(d):
                wait_until(lambda: d.status().count(State.SENT) == len(ids), 30, "every message")
                [primary, _] = d.providers()
            assert d.status().count(State.DEAD) == 0
            assert sorted(copies(secondary)) == sorted(ids)
            assert primary.state == "down" and primary.credentials_refused
            assert "ALERT" in caplog.text and "refused our credentials" in caplog.text
            assert "wrong" not in caplog.text
    finally:
        refusing.stop()
        secondary.stop()
