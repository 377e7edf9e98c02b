"""The Resend provider over real HTTP (loopback) against the local fake Resend server."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailq.broker import Job
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.mime import envelope, render
from emailq.providers.base import Accepted, Permanent, Rendered, SendResult, Transient
from emailq.providers.factory import open_provider
from emailq.providers.resend import (
    QUOTA_RETRY_FLOOR,
    ResendProvider,
    ResendSettings,
    batch_idempotency_key,
    idempotency_key,
    to_resend_json,
)
from emailq.worker import render_job
from fake_resend import FakeResend

SENDER = "planner@weddings.example"


def make(
    number: int = 0,
    *,
    to: Sequence[str] = ("Guest <guest@example.com>",),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    attachments: Sequence[tuple[str, bytes, str]] = (),
    key: str | None = None,
) -> Rendered:
    """A rendered message built with the standard library (the house renderer is separate)."""
    message_id = f"01msg{number:05d}"
    message = EmailMessage()
    message["From"] = f"Planner <{SENDER}>"
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = f"Hello {number}"
    message["Date"] = "Sat, 20 Jun 2026 10:00:00 +0000"
    message["Message-ID"] = f"<{message_id}@emailq.local>"
    message["X-Emailq-Id"] = message_id
    message.set_content(f"Plain body {number}\n")
    message.add_alternative(f"<p>HTML body {number}</p>\n", subtype="html")
    for filename, data, content_type in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype, subtype, filename=filename)
    recipients = [addr.rsplit("<", 1)[-1].rstrip(">") for addr in (*to, *cc, *bcc)]
    return Rendered(message_id, SENDER, tuple(recipients), message.as_bytes(policy=SMTP), key)


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend() as server:
        yield server


def provider_for(
    fake: FakeResend, timeout: float = 5.0, api_key: str | None = None, unsure_retries: int = 0
) -> ResendProvider:
    """One call per send unless ``unsure_retries`` is given: most tests look at one answer."""
    key = fake.api_key if api_key is None else api_key
    settings = ResendSettings(api_key=key, base_url=fake.url, timeout=timeout,
                              unsure_retries=unsure_retries, unsure_backoff=0.01)  # fmt: skip
    return ResendProvider(settings)


def send(provider: ResendProvider, batch: Sequence[Rendered]) -> list[SendResult]:
    async def run() -> list[SendResult]:
        try:
            return await provider.send_batch(batch)
        finally:
            await provider.close()

    return asyncio.run(run())


def accepted_ids(results: Sequence[SendResult]) -> list[str]:
    assert all(isinstance(r, Accepted) for r in results), results
    return [r.provider_id for r in results if isinstance(r, Accepted)]


def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sent_by_message(fake: FakeResend) -> dict[str, str]:
    """The fake's email id for each of our message ids (from the X-Emailq-Id header)."""
    return {s.email["headers"]["X-Emailq-Id"]: s.id for s in fake.sent}


# -- to_resend_json --------------------------------------------------------------------------


def test_json_fields_from_mime() -> None:
    message = make(
        7, to=("Guest One <one@example.com>", "two@example.com"), cc=("Aunt <aunt@example.com>",)
    )
    body = to_resend_json(message)
    assert body["from"] == f"Planner <{SENDER}>"
    assert body["to"] == ["Guest One <one@example.com>", "two@example.com"]
    assert body["cc"] == ["Aunt <aunt@example.com>"]
    assert body["subject"] == "Hello 7"
    assert body["text"] == "Plain body 7\n"
    assert body["html"] == "<p>HTML body 7</p>\n"
    assert "bcc" not in body and "attachments" not in body
    # Custom headers pass on; the ones Resend writes itself (Date, Message-ID, MIME) do not,
    # so a re-rendered message gives the same JSON (and the same idempotent request).
    assert body["headers"] == {"X-Emailq-Id": message.message_id}


def test_bcc_is_the_envelope_minus_to_and_cc() -> None:
    message = make(
        to=("Guest <Guest@Example.com>",),
        cc=("cousin@example.com",),
        bcc=("secret@example.com", "other@example.org"),
    )
    message = Rendered(
        message.message_id,
        message.mail_from,
        ("guest@example.com", "cousin@example.com", "secret@example.com", "other@example.org"),
        message.data,
    )
    body = to_resend_json(message)
    assert body["bcc"] == ["secret@example.com", "other@example.org"]
    assert b"secret@example.com" not in message.data  # bcc is only ever in the envelope


def test_attachments_become_base64_with_filename() -> None:
    pdf = bytes(range(256)) * 10
    message = make(attachments=[("Plan für Sie.pdf", pdf, "application/pdf")])
    body = to_resend_json(message)
    (attachment,) = body["attachments"]
    assert base64.b64decode(attachment["content"]) == pdf
    assert attachment["filename"] == "Plan für Sie.pdf"
    assert attachment["content_type"] == "application/pdf"
    assert body["text"] == "Plain body 0\n"  # the body parts are not taken for attachments


def test_json_from_the_house_renderer() -> None:
    """The real input: emailq.mime's fast renderer, with the hard cases it encodes."""
    long_name = "Plännér Ünd Sehr Langer Name Mit Umlauten Über Fünfzig Bytes"
    email = parse_email(
        {"from": f"{long_name} <{SENDER}>",
         "to": ['"Smith, John" <john@example.com>', "g@bücher.example"],
         "bcc": ["hidden@example.com"],
         "reply_to": ["rsvp@weddings.example"],
         "subject": "Grüße – " + "see you soon " * 12,
         "text": "Plain\nbody ü", "html": "<p>Hi <img src=cid:logo></p>",
         "headers": {"List-Unsubscribe": "<https://weddings.example/u>"},
         "attachments": [
             {"filename": "logo.png", "content_type": "image/png",
              "content": base64.b64encode(b"\x89PNG").decode(), "content_id": "logo"},
             {"filename": "plan é.pdf", "content_type": "application/pdf",
              "content": base64.b64encode(b"%PDF").decode()},
         ]}
    )  # fmt: skip
    mail_from, recipients = envelope(email)
    data = render(email, message_id="01house", domain="emailq.local")
    body = to_resend_json(Rendered("01house", mail_from, tuple(recipients), data))
    assert body["from"] == f"{long_name} <{SENDER}>"
    assert body["to"] == ['"Smith, John" <john@example.com>', "g@xn--bcher-kva.example"]
    assert body["bcc"] == ["hidden@example.com"]
    assert body["reply_to"] == ["rsvp@weddings.example"]
    assert body["subject"] == "Grüße – " + "see you soon " * 12
    assert body["text"] == "Plain\nbody ü"
    assert body["html"] == "<p>Hi <img src=cid:logo></p>"
    assert body["headers"] == {
        "List-Unsubscribe": "<https://weddings.example/u>",
        "X-Emailq-Id": "01house",
    }
    by_name = {a["filename"]: a for a in body["attachments"]}
    assert by_name["logo.png"]["content_id"] == "logo"
    assert base64.b64decode(by_name["logo.png"]["content"]) == b"\x89PNG"
    assert base64.b64decode(by_name["plan é.pdf"]["content"]) == b"%PDF"
    assert "content_id" not in by_name["plan é.pdf"]


def test_a_forwarded_email_stays_an_attachment() -> None:
    # Since issue 11 a .eml goes as message/rfc822 in 7bit (RFC 2046 5.2.1), which parsers
    # read as a message inside the message: its body must not become the email's text.
    eml = b"From: x@example.org\nSubject: Fwd\n\ninner body\n"
    email = parse_email({"from": SENDER, "to": "g@example.com", "subject": "s",
                         "html": "<p>outer</p>",
                         "attachments": [{"filename": "fwd.eml", "content": eml}]})  # fmt: skip
    mail_from, recipients = envelope(email)
    data = render(email, message_id="01fwd", domain="emailq.local")
    body = to_resend_json(Rendered("01fwd", mail_from, tuple(recipients), data))
    assert body["html"] == "<p>outer</p>" and "text" not in body
    [attachment] = body["attachments"]
    assert (attachment["filename"], attachment["content_type"]) == ("fwd.eml", "message/rfc822")
    content = base64.b64decode(attachment["content"])
    assert b"Subject: Fwd" in content and content.rstrip().endswith(b"inner body")


# Any printable text, without the line breaks and controls the model refuses in headers.
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1)


@settings(max_examples=200, deadline=None)
@given(subject=header_text, name=header_text, value=header_text)
def test_header_text_survives_the_house_renderer(subject: str, name: str, value: str) -> None:
    """Encoded-words, folding and quoting undone exactly (what the model stored comes back)."""
    email = parse_email(
        {"from": {"name": name, "email": SENDER}, "to": ["guest@example.com"],
         "subject": subject, "text": "t", "headers": {"X-Note": value}}
    )  # fmt: skip
    mail_from, recipients = envelope(email)
    data = render(email, message_id="01prop", domain="emailq.local")
    body = to_resend_json(Rendered("01prop", mail_from, tuple(recipients), data))
    assert body["subject"] == email.subject
    assert body["headers"]["X-Note"] == email.headers["X-Note"]
    assert body["from"] == str(Address(email.sender.name or "", "planner", "weddings.example"))


def test_idempotency_keys() -> None:
    assert idempotency_key(make(3)) == "emailq/01msg00003"
    assert idempotency_key(make(3, key="rsvp-reminder/guest-42")) == "rsvp-reminder/guest-42"
    key = batch_idempotency_key(["b", "a", "c"])
    assert key == batch_idempotency_key(["c", "b", "a"]) != batch_idempotency_key(["a", "b"])
    assert key.startswith("emailq-batch/") and len(key) == len("emailq-batch/") + 32


def test_settings_repr_hides_the_key() -> None:
    assert "re_secret" not in repr(ResendSettings(api_key="re_secret"))


def test_factory_opens_resend_over_http(fake: FakeResend) -> None:
    port = fake.url.rsplit(":", 1)[1]
    provider = open_provider(f"resend+http://{fake.api_key}@127.0.0.1:{port}")
    assert isinstance(provider, ResendProvider)
    assert accepted_ids(send(provider, [make()]))


# -- batches ---------------------------------------------------------------------------------


def test_tags_reach_resend_in_the_characters_it_takes(fake: FakeResend) -> None:
    email = parse_email({"from": SENDER, "to": "guest@example.com", "subject": "Hi",
                         "text": "Hello", "tags": {"wedding.id": "w 42", "kind": "invitation",
                                                   "note": ""}})  # fmt: skip
    job = Job(id="01tagged", token=1, lane=Lane.BULK, payload=email.to_payload(), attempts=1,
              max_attempts=5, enqueued_at=0.0, tenant="default")  # fmt: skip
    rendered = render_job(job, "emailq.local")
    assert accepted_ids(send(provider_for(fake), [rendered, make(1)]))
    [tagged] = [s.email for s in fake.sent if s.email["headers"]["X-Emailq-Id"] == "01tagged"]
    assert tagged["tags"] == [{"name": "wedding_id", "value": "w_42"},
                              {"name": "kind", "value": "invitation"}]  # fmt: skip


def test_batch_of_250_goes_in_three_calls(fake: FakeResend) -> None:
    batch = [make(i) for i in range(250)]
    results = send(provider_for(fake), batch)
    calls = fake.calls_to("/emails/batch")  # sent concurrently: in any order
    assert sorted(len(call.body) for call in calls) == [50, 100, 100]
    for call in calls:
        assert call.headers["x-batch-validation"] == "permissive"
        assert call.headers["authorization"] == f"Bearer {fake.api_key}"
        assert call.headers["idempotency-key"].startswith("emailq-batch/")
    ids = sent_by_message(fake)
    assert len(fake.sent) == 250
    assert accepted_ids(results) == [ids[m.message_id] for m in batch]


def test_permissive_errors_map_to_their_index(fake: FakeResend) -> None:
    too_many = tuple(f"guest{n}@example.com" for n in range(51))  # Resend: at most 50 in to
    batch = [make(0), make(1), make(2, to=too_many), make(3), make(4, to=("nobody@localhost",))]
    results = send(provider_for(fake), batch)
    assert isinstance(results[2], Permanent) and "at most 50" in results[2].reason
    assert isinstance(results[4], Permanent) and "Invalid `to`" in results[4].reason
    assert "nobody@" not in results[4].reason  # never a full address in a reason
    ids = sent_by_message(fake)
    assert len(fake.sent) == 3
    for index in (0, 1, 3):
        assert results[index] == Accepted(ids[batch[index].message_id])


def test_attachments_go_one_by_one(fake: FakeResend) -> None:
    pdf = ("plan.pdf", b"%PDF-1.7 ...", "application/pdf")
    batch = [
        make(0, attachments=[pdf]),
        make(1),
        make(2, attachments=[pdf], key="invite/guest-2"),
        make(3),
    ]
    results = send(provider_for(fake), batch)
    singles = fake.calls_to("/emails")
    assert sorted(call.headers["idempotency-key"] for call in singles) == [
        "emailq/01msg00000",
        "invite/guest-2",
    ]
    assert all(call.body["attachments"][0]["filename"] == "plan.pdf" for call in singles)
    (batch_call,) = fake.calls_to("/emails/batch")
    assert [e["subject"] for e in batch_call.body] == ["Hello 1", "Hello 3"]
    ids = sent_by_message(fake)
    assert accepted_ids(results) == [ids[m.message_id] for m in batch]


def test_a_lone_message_uses_the_single_endpoint(fake: FakeResend) -> None:
    results = send(provider_for(fake), [make(5, bcc=("hidden@example.com",))])
    (call,) = fake.calls
    assert call.path == "/emails" and call.headers["idempotency-key"] == "emailq/01msg00005"
    assert call.body["bcc"] == ["hidden@example.com"]
    assert accepted_ids(results) == [fake.sent[0].id]


# -- failures --------------------------------------------------------------------------------


def test_429_is_transient_with_the_servers_retry_after(fake: FakeResend) -> None:
    fake.fail_next(2, 429, retry_after=7)
    results = send(
        provider_for(fake), [make(0), make(1, attachments=[("a.txt", b"a", "text/plain")])]
    )
    expected = Transient("429 rate_limit_exceeded: Injected 429.", retry_after=7.0)
    assert results == [expected, expected]
    assert fake.sent == []


def test_429_without_retry_after_uses_ratelimit_reset(fake: FakeResend) -> None:
    fake.fail_next(1, 429, headers={"ratelimit-reset": "3", "ratelimit-remaining": "0"})
    (result,) = send(provider_for(fake), [make()])
    assert isinstance(result, Transient) and result.retry_after == 3.0


def test_enforced_rate_limit_answers_429() -> None:
    with FakeResend(rate_limit=1, enforce_rate_limit=True, clock=lambda: 1000.25) as fake:
        provider = provider_for(fake)
        assert accepted_ids(send(provider, [make(0)]))
        assert provider.ratelimit is not None
        assert (provider.ratelimit.limit, provider.ratelimit.remaining) == (1, 0)
        (result,) = send(provider, [make(1)])
    assert isinstance(result, Transient) and "rate_limit_exceeded" in result.reason
    assert result.retry_after == 1.0
    assert len(fake.sent) == 1


def test_ratelimit_headers_are_exposed(fake: FakeResend) -> None:
    provider = provider_for(fake)
    assert provider.ratelimit is None
    send(provider, [make()])
    assert provider.ratelimit is not None
    assert provider.ratelimit.limit == 2
    assert provider.ratelimit.remaining is not None and provider.ratelimit.remaining <= 1
    assert provider.ratelimit.reset == 1.0


def test_500_is_transient(fake: FakeResend) -> None:
    fake.fail_next(1, 500)
    results = send(provider_for(fake), [make(0), make(1)])
    assert all(isinstance(r, Transient) and r.reason.startswith("500 ") for r in results)


def test_a_hang_past_the_timeout_is_transient(fake: FakeResend) -> None:
    fake.hang_next(1, sent=False)
    (result,) = send(provider_for(fake, timeout=0.3), [make()])
    assert isinstance(result, Transient) and result.reason.startswith("timeout")


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens
    settings = ResendSettings(api_key="re_x", base_url=f"http://127.0.0.1:{port}", timeout=2)
    (result,) = send(ResendProvider(settings), [make()])
    assert isinstance(result, Transient) and result.reason.startswith("connection: ConnectError")
    assert result.provider_down and not result.unsure  # unreachable: nothing went out


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [("", "401 missing_api_key"), ("re_wrong_key", "403 invalid_api_key")],
)
def test_a_refused_key_is_the_providers_failure_not_the_mails(
    fake: FakeResend, api_key: str, expected: str
) -> None:
    # A mistyped key must not bury every message it touches: the provider is paused and
    # the mail waits, spending no attempt, until an operator fixes the key.
    results = send(provider_for(fake, api_key=api_key), [make(0), make(1)])
    assert all(isinstance(r, Transient) and r.provider_down for r in results)
    assert all(r.reason.startswith(expected) for r in results if isinstance(r, Transient))
    assert all("re_wrong_key" not in r.reason for r in results if isinstance(r, Transient))


def test_422_is_permanent_and_names_the_error(fake: FakeResend) -> None:
    too_many = tuple(f"guest{n}@example.com" for n in range(51))
    (result,) = send(provider_for(fake), [make(to=too_many)])
    assert result == Permanent(
        "422 validation_error: The `to` field can have at most 50 recipients."
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("concurrent_idempotent_requests", Transient), ("invalid_idempotent_request", Permanent)],
)
def test_409_is_transient_only_for_a_concurrent_request(
    fake: FakeResend, name: str, kind: type[Transient | Permanent]
) -> None:
    fake.fail_next(1, 409, name=name, message="Same idempotency key ...")
    (result,) = send(provider_for(fake), [make()])
    assert isinstance(result, kind) and name in result.reason


def test_reasons_never_hold_the_api_key_or_an_address(fake: FakeResend) -> None:
    echo = f"Key {fake.api_key} may not send to guest.name@example.com (from {SENDER})."
    fake.fail_next(1, 403, name="validation_error", message=echo)
    fake.fail_next(1, 500, message=echo)
    fake.fail_next(1, 429, message=echo)
    reasons = [
        r.reason
        for r in (*send(provider_for(fake), [make(0)]), *send(provider_for(fake), [make(1)]),
                  *send(provider_for(fake), [make(2)]))
        if isinstance(r, Transient | Permanent)
    ]  # fmt: skip
    assert len(reasons) == 3
    for reason in reasons:
        assert fake.api_key not in reason
        assert "guest.name@" not in reason and "planner@" not in reason
        assert "***@example.com" in reason


def test_unreadable_message_is_permanent(fake: FakeResend) -> None:
    broken = Rendered("01broken", SENDER, ("guest@example.com",), b"Subject: no from\r\n\r\nhi")
    results = send(provider_for(fake), [broken, make(1)])
    assert isinstance(results[0], Permanent) and "no From" in results[0].reason
    assert isinstance(results[1], Accepted)


# -- idempotency: a retry never sends twice ---------------------------------------------------


def test_a_retried_batch_is_not_sent_twice(fake: FakeResend) -> None:
    batch = [make(i) for i in range(5)]
    fake.hang_next(1, sent=True)  # Resend sends them, but the answer comes too late
    first = send(provider_for(fake, timeout=0.3), batch)
    assert all(isinstance(r, Transient) for r in first)
    assert len(fake.sent) == 5
    # The worker retries the same messages, perhaps in another order, re-rendered.
    retried = list(reversed(batch))
    second = send(provider_for(fake), retried)
    assert len(fake.sent) == 5  # nothing sent again
    assert fake.calls_to("/emails/batch")[-1].replayed
    ids = sent_by_message(fake)
    assert accepted_ids(second) == [ids[m.message_id] for m in retried]


def test_an_unsure_call_is_asked_again_at_once_with_the_same_key(fake: FakeResend) -> None:
    batch = [make(i) for i in range(5)]
    fake.hang_next(1, sent=True)  # Resend sends them, but the answer comes too late
    results = send(provider_for(fake, timeout=0.3, unsure_retries=2), batch)
    ids = sent_by_message(fake)
    assert accepted_ids(results) == [ids[m.message_id] for m in batch]
    assert len(fake.sent) == 5
    first, again = fake.calls_to("/emails/batch")
    assert first.headers["idempotency-key"] == again.headers["idempotency-key"]
    assert again.replayed


def test_5xx_is_asked_again_then_left_to_the_queue(fake: FakeResend) -> None:
    fake.fail_next(2, 500)
    assert accepted_ids(send(provider_for(fake, unsure_retries=2), [make(0), make(1)]))
    fake.fail_next(3, 500)
    results = send(provider_for(fake, unsure_retries=2), [make(2), make(3)])
    assert all(isinstance(r, Transient) and r.unsure for r in results)
    assert len(fake.calls_to("/emails/batch")) == 6
    assert len(fake.sent) == 2


@pytest.mark.parametrize("name", ["daily_quota_exceeded", "monthly_quota_exceeded"])
def test_a_spent_quota_is_retried_an_hour_later_at_the_earliest(
    fake: FakeResend, name: str
) -> None:
    fake.fail_next(1, 429, name=name, retry_after=5)
    (result,) = send(provider_for(fake), [make()])
    assert isinstance(result, Transient) and result.retry_after == QUOTA_RETRY_FLOOR
    assert name in result.reason


def test_429_is_not_asked_again_in_the_call(fake: FakeResend) -> None:
    fake.fail_next(1, 429, retry_after=3)
    (result,) = send(provider_for(fake, unsure_retries=2), [make()])
    assert isinstance(result, Transient) and not result.unsure and result.retry_after == 3
    assert len(fake.calls_to("/emails")) == 1 and fake.sent == []


def test_a_retry_while_the_first_call_runs_waits(fake: FakeResend) -> None:
    batch = [make(i) for i in range(3)]
    fake.hang_next(1, sent=False, seconds=30)  # the first call holds the key, still working
    assert all(isinstance(r, Transient) for r in send(provider_for(fake, timeout=0.3), batch))
    during = send(provider_for(fake), batch)
    assert all(
        isinstance(r, Transient) and "concurrent_idempotent_requests" in r.reason for r in during
    )
    fake.release()
    poll(lambda: len(fake.sent) == 3)
    after = send(provider_for(fake), batch)
    ids = sent_by_message(fake)
    assert accepted_ids(after) == [ids[m.message_id] for m in batch]
    assert len(fake.sent) == 3


def test_a_retried_single_send_is_not_sent_twice(fake: FakeResend) -> None:
    message = make(attachments=[("plan.pdf", b"%PDF", "application/pdf")])
    fake.hang_next(1)
    assert isinstance(send(provider_for(fake, timeout=0.3), [message])[0], Transient)
    (result,) = send(provider_for(fake), [message])
    assert result == Accepted(fake.sent[0].id) and len(fake.sent) == 1


def test_one_client_is_reused_across_calls(fake: FakeResend) -> None:
    provider = provider_for(fake)

    async def run() -> tuple[object, object]:
        await provider.send_batch([make(0)])
        first = provider._client
        await provider.send_batch([make(1), make(2)])
        second = provider._client
        await provider.close()
        return first, second

    first, second = asyncio.run(run())
    assert first is not None and first is second and provider._client is None


# -- the fake itself keeps to the documented contract ----------------------------------------


def test_fake_strict_batch_mode_fails_the_whole_call(fake: FakeResend) -> None:
    good = to_resend_json(make(0))
    bad = {**good, "to": []}
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {fake.api_key}"}) as c:
        strict = c.post("/emails/batch", json=[good, bad])
        too_many = c.post("/emails/batch", json=[good] * 101)
        attachment = c.post(
            "/emails/batch", json=[to_resend_json(make(1, attachments=[("a", b"a", "text/plain")]))]
        )
        missing = c.post("/emails", json={k: v for k, v in good.items() if k != "subject"})
        bad_key = c.post("/emails", json=good, headers={"Idempotency-Key": "k" * 257})
    assert strict.status_code == 422 and strict.json()["name"] == "validation_error"
    assert too_many.status_code == 422
    assert attachment.status_code == 422 and "Attachments" in attachment.json()["message"]
    assert missing.status_code == 422 and missing.json() == {
        "statusCode": 422, "name": "missing_required_field", "message": "Missing `subject` field."
    }  # fmt: skip
    assert bad_key.status_code == 400 and bad_key.json()["name"] == "invalid_idempotency_key"
    assert fake.sent == []


def test_fake_same_key_with_another_body_is_409(fake: FakeResend) -> None:
    good = to_resend_json(make(0))
    headers = {"Authorization": f"Bearer {fake.api_key}", "Idempotency-Key": "k1"}
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        first = client.post("/emails", json=good)
        again = client.post("/emails", json=good)
        other = client.post("/emails", json={**good, "subject": "changed"})
    assert first.json() == again.json() and json.loads(again.content)["id"] == fake.sent[0].id
    assert other.status_code == 409 and other.json()["name"] == "invalid_idempotent_request"
    assert len(fake.sent) == 1
