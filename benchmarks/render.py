"""How long one message takes to become bytes: ours against two standard-library paths.

Run: .venv/bin/python benchmarks/render.py

The message is the common case, about 1.5 KB of text + HTML (multipart/alternative).
Each row is the best of several timed runs, so other load on the machine shows as noise,
not as a slower figure. No asserts: the numbers are for reading.
"""

from __future__ import annotations

import email.policy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr

from emailq.message import Email, parse_email
from emailq.mime import render

MESSAGE_ID = "01jx5m0abcdefghjkmnpqrstvw"
DOMAIN = "mail.weddings.example"
SENTENCE = "We are delighted to invite you to celebrate our wedding with us in June. "
TEXT = "Dear Guest One,\n\n" + SENTENCE * 10 + "\n\nWith love,\nAna & Ben\n"
HTML = "<html><body><p>Dear Guest One,</p><p>" + SENTENCE * 10 + "</p></body></html>"


def sample() -> Email:
    return parse_email(
        {
            "from": "Ana & Ben <hello@weddings.example>",
            "to": "Guest One <guest1@example.org>",
            "subject": "Ana & Ben: your invitation",
            "text": TEXT,
            "html": HTML,
            "headers": {"List-Unsubscribe": "<https://weddings.example/u/guest1>"},
            "tenant": "weddings",
            "idempotency_key": "w0-invitation-1",
            "wedding": {
                "wedding_id": "w0",
                "ceremony_at": "2026-06-13T15:00:00+02:00",
                "kind": "invitation",
            },
        }
    )


def stdlib_default(source: Email) -> bytes:
    """What docs/architecture.md §4 describes: EmailMessage + set_content, default policy."""
    message = EmailMessage()
    message["From"] = formataddr((source.sender.name or "", source.sender.email))
    message["To"] = [formataddr((a.name or "", a.email)) for a in source.to]
    message["Subject"] = source.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{MESSAGE_ID}@{DOMAIN}>"
    for name, value in source.headers.items():
        message[name] = value
    message["X-Emailq-Id"] = MESSAGE_ID
    message.set_content(source.text or "")
    message.add_alternative(source.html or "", subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def stdlib_compat32(source: Email) -> bytes:
    """The older API: MIMEMultipart + MIMEText under the compat32 policy."""
    message = MIMEMultipart("alternative")
    message["From"] = formataddr((source.sender.name or "", source.sender.email))
    message["To"] = ", ".join(formataddr((a.name or "", a.email)) for a in source.to)
    message["Subject"] = source.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{MESSAGE_ID}@{DOMAIN}>"
    for name, value in source.headers.items():
        message[name] = value
    message["X-Emailq-Id"] = MESSAGE_ID
    message.attach(MIMEText(source.text or "", "plain", "utf-8"))
    message.attach(MIMEText(source.html or "", "html", "utf-8"))
    return message.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def per_message(action: Callable[[], object], budget_s: float = 0.4, runs: int = 5) -> float:
    """Seconds per call: calibrate a loop of about budget_s / runs, keep the best run."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            action()
        elapsed = time.perf_counter() - start
        if elapsed > budget_s / runs / 4:
            break
        loops *= 4
    best = elapsed / loops
    for _ in range(runs - 1):
        start = time.perf_counter()
        for _ in range(loops):
            action()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main() -> None:
    source = sample()
    payload = source.to_payload()
    rendered = render(source, message_id=MESSAGE_ID, domain=DOMAIN)
    rows = [
        ("emailq render()", lambda: render(source, message_id=MESSAGE_ID, domain=DOMAIN)),
        ("stdlib EmailMessage + set_content (default)", lambda: stdlib_default(source)),
        ("stdlib MIMEMultipart + MIMEText (compat32)", lambda: stdlib_compat32(source)),
        (
            "Email.from_payload + render() (worker)",
            lambda: render(Email.from_payload(payload), message_id=MESSAGE_ID, domain=DOMAIN),
        ),
        ("Email.from_payload alone", lambda: Email.from_payload(payload)),
        ("parse_email (intake, validates addresses)", lambda: parse_email(payload)),
    ]
    print(f"message: {len(TEXT) + len(HTML)} characters of text + HTML, {len(rendered)} bytes")
    print(f"payload: {len(payload)} bytes of JSON\n")
    print(f"{'path':<46} {'µs/message':>11} {'messages/s':>11} {'vs ours':>8}")
    ours = None
    for name, action in rows:
        seconds = per_message(action)
        ours = ours or seconds
        print(f"{name:<46} {seconds * 1e6:>11.1f} {1 / seconds:>11,.0f} {seconds / ours:>7.1f}x")


if __name__ == "__main__":
    main()
