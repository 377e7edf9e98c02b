"""Logs without personal data: a whole run of `emailq serve` + `emailq run`, with a password
in the provider URL, writes no full address, no body, no password and no API key."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from deployments import wait_for_api
from emailq.logs import mask_addresses, scrub
from emailq.sink import SinkHandler, free_port

PASSWORD = "Pa55-very-secret-word"
BODY = "Grandma's hearing aid: seat her near the front"
GUESTS = [f"guest.number{i}@example.org" for i in range(5)]
BUSY = "busy.guest@example.org"  # refused for now, naming itself in the reply


class NamingSink(SinkHandler):
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == BUSY:
            return f"451 4.2.0 <{address}> mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def accept_any(*args: Any) -> AuthResult:
    return AuthResult(success=True)


def test_masking_and_scrubbing() -> None:
    assert mask_addresses("to <rosa@example.org>") == "to <r***@example.org>"
    line = scrub("smtp://u:hunter22@h:25 eq_0123456789ab_" + "x" * 43)
    assert "hunter22" not in line and "x" * 43 not in line


@pytest.mark.slow
def test_a_whole_run_logs_no_address_body_or_secret(tmp_path: Path) -> None:
    handler = NamingSink(keep_data=True)
    port = free_port()
    sink = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False,
                      authenticator=accept_any)  # fmt: skip
    sink.start()
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    env |= {
        "EMAILQ_BROKER_URL": f"sqlite:///{tmp_path}/queue.db",
        "EMAILQ_PROVIDER_URL": f"smtp://mailer:{PASSWORD}@127.0.0.1:{port}?auth=plaintext",
        "EMAILQ_PRIVACY_HASH_SECRET": "hash-secret-for-the-test",
        "EMAILQ_WORKER_RETRY_BASE_S": "0.5",
    }
    emailq = [sys.executable, "-m", "emailq"]
    created = subprocess.run([*emailq, "keys", "create", "--tenant", "acme"], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    api_key = created.stdout.strip().splitlines()[-1]
    logs = [tmp_path / "serve.log", tmp_path / "run.log"]
    commands = [["serve", "--port", str(api_port)], ["run", "-n", "1"]]
    outputs = [log.open("w") for log in logs]
    procs = [
        subprocess.Popen([*emailq, *command], env=env, stdout=out, stderr=subprocess.STDOUT)
        for command, out in zip(commands, outputs, strict=True)
    ]
    try:
        _drive_the_api(api_port, api_key)
        deadline = time.monotonic() + 60
        while len(handler.deliveries) < len(GUESTS) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(handler.deliveries) == len(GUESTS)
        time.sleep(1.5)  # the busy guest's retries get logged
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        for out in outputs:
            out.close()
        sink.stop()
    text = "\n".join(log.read_text() for log in logs)
    assert "delivering" in text  # the worker did log
    for secret in (PASSWORD, api_key, BODY, *GUESTS, BUSY):
        assert secret not in text, secret
    assert not re.search(r"[A-Za-z0-9._%+-]{2,}@example\.org", text)  # masked: x***@


def _drive_the_api(port: int, api_key: str) -> None:
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {api_key}"}
    wait_for_api(base)
    for to in [*GUESTS, BUSY]:
        sent = httpx.post(f"{base}/v1/emails", headers=auth, json={
            "from": "planner@weddings.example", "to": to, "subject": "Seating", "text": BODY,
        })  # fmt: skip
        assert sent.status_code == 202, sent.text
    bad = httpx.post(f"{base}/v1/emails", headers=auth, json={"from": "x", "to": GUESTS[0]})
    assert bad.status_code == 422
    wrong = httpx.post(f"{base}/v1/emails", headers={"Authorization": "Bearer eq_" + "0" * 50})
    assert wrong.status_code == 401
    erased = httpx.post(f"{base}/v1/erasure", headers=auth, json={"recipient": "gone@example.org"})
    assert erased.status_code == 200
