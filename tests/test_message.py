"""The email model: what it accepts, what it refuses (naming the field), and the payload."""

from __future__ import annotations

import base64
import json
import pickle
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from emailq import message as message_module
from emailq.errors import EmailqError, FieldError, InvalidEmail, ValidationError
from emailq.message import (
    Address,
    Attachment,
    Email,
    MessageKind,
    WeddingContext,
    parse_email,
    parse_shared,
    personalised,
)

CEREMONY = "2026-06-13T15:00:00+02:00"


def valid(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "from": "Ana & Ben <hello@weddings.example>",
        "to": "guest@example.org",
        "subject": "Our wedding",
        "text": "Dear guest,\nsee you there.\n",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def fields_of(data: Any, **options: Any) -> list[str]:
    with pytest.raises(InvalidEmail) as caught:
        parse_email(data, **options)
    return [error.field for error in caught.value.errors]


# Accepted shapes


def test_minimal_email_with_defaults() -> None:
    email = parse_email(valid())
    assert email.sender == Address(email="hello@weddings.example", name="Ana & Ben")
    assert email.to == [Address(email="guest@example.org")]
    assert (email.cc, email.bcc, email.reply_to, email.attachments) == ([], [], [], [])
    assert (email.html, email.headers, email.tags, email.tenant) == (None, {}, {}, "default")
    assert (email.send_at, email.wedding, email.priority, email.idempotency_key) == (None,) * 4


@pytest.mark.parametrize(
    ("bodies", "expected"),
    [
        ({"text": "hi"}, ("hi", None)),
        ({"text": None, "html": "<p>hi</p>"}, (None, "<p>hi</p>")),
        ({"html": "<p>hi</p>"}, ("Dear guest,\nsee you there.\n", "<p>hi</p>")),
        ({"text": "  \n", "html": "<p>hi</p>"}, (None, "<p>hi</p>")),  # blank means absent
    ],
)
def test_text_html_or_both(bodies: dict[str, Any], expected: tuple[Any, Any]) -> None:
    email = parse_email(valid(**bodies))
    assert (email.text, email.html) == expected


@pytest.mark.parametrize(
    ("given", "address", "name"),
    [
        ("a@example.com", "a@example.com", None),
        ("  a@EXAMPLE.com ", "a@example.com", None),  # the domain is normalised
        ("Bob <bob@example.com>", "bob@example.com", "Bob"),
        ("<bob@example.com>", "bob@example.com", None),
        ('"Smith, Jo \\"J\\"" <jo@example.com>', "jo@example.com", 'Smith, Jo "J"'),
        ("Zoë  \t Ünal <zoe@example.com>", "zoe@example.com", "Zoë Ünal"),
        ({"email": "x@bücher.example", "name": " X "}, "x@bücher.example", "X"),
        ({"email": "y@example.com", "name": "  "}, "y@example.com", None),
    ],
)
def test_address_forms(given: Any, address: str, name: str | None) -> None:
    email = parse_email(valid(to=given))
    assert email.to == [Address(email=address, name=name)]


def test_recipient_lists_and_envelope_order() -> None:
    email = parse_email(
        valid(
            to=["a@example.com", "B <b@example.com>"],
            cc="c@example.com",
            bcc=["a@example.com", "d@example.com"],
            reply_to="Planner <planner@weddings.example>",
        )
    )
    assert [a.email for a in email.to] == ["a@example.com", "b@example.com"]
    assert email.recipients() == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]
    assert email.reply_to[0].name == "Planner"


def test_attachments_from_bytes_or_base64_and_guessed_type() -> None:
    email = parse_email(
        valid(
            html='<img src="cid:logo">',
            attachments=[
                {"filename": "menu.pdf", "content": b"%PDF-1.7"},
                {"filename": "logo.PNG", "content": "iVBORw0K", "content_id": "<logo>"},
                {"filename": "notes", "content": "", "content_type": "text/plain; charset=utf-8"},
                {"filename": "x.tar.gz", "content": b""},
                {"filename": "data:evil/x,1", "content": b""},
            ],
        )
    )
    menu, logo, notes, tarball, data_url = email.attachments
    assert (menu.content, menu.content_type) == (b"%PDF-1.7", "application/pdf")
    assert (logo.content, logo.content_type, logo.content_id) == (
        b"\x89PNG\r\n",
        "image/png",
        "logo",
    )
    assert (notes.content, notes.content_type) == (b"", "text/plain; charset=utf-8")
    assert tarball.content_type == data_url.content_type == "application/octet-stream"
    assert json.loads(email.to_payload())["attachments"][0]["content"] == "JVBERi0xLjc="


def test_wedding_context() -> None:
    email = parse_email(
        valid(
            wedding={"wedding_id": "w-42", "ceremony_at": CEREMONY, "kind": "ceremony_change"},
            send_at="2026-06-13T09:00:00Z",
            priority=100,
            tenant="acme.weddings_1",
            idempotency_key="w-42 ceremony change #3",
            tags={"campaign": "june", "kind": "update"},
            headers={"List-Unsubscribe": "<https://weddings.example/u/1>", "X-Wedding": "w-42"},
        )
    )
    wedding = email.wedding
    assert wedding is not None
    assert wedding.kind is MessageKind.CEREMONY_CHANGE
    assert wedding.ceremony_at == datetime(2026, 6, 13, 13, tzinfo=UTC)
    assert wedding.zone.utcoffset(None) == timedelta(hours=2)  # no name: the offset is the zone
    assert email.send_at == datetime(2026, 6, 13, 9, tzinfo=UTC)
    assert email.priority == 100


def test_wedding_zone_name_kept_from_a_zoneinfo_datetime() -> None:
    paris = ZoneInfo("Europe/Paris")
    wedding = WeddingContext(wedding_id="w", ceremony_at=datetime(2026, 6, 13, 15, tzinfo=paris))
    assert wedding.timezone == "Europe/Paris"
    assert wedding.kind is MessageKind.OTHER
    assert wedding.local_ceremony_at == datetime(2026, 6, 13, 15, tzinfo=paris)
    named = WeddingContext.model_validate(
        {"wedding_id": "w", "ceremony_at": "2026-06-13T13:00:00Z", "timezone": "Asia/Tokyo"}
    )
    assert named.local_ceremony_at.hour == 22


def test_required_kinds_exist() -> None:
    kinds = {
        "ceremony_change",
        "weather_alert",
        "venue_change",
        "emergency",
        "vendor_schedule_change",
        "wedding_day_update",
        "vendor_update",
        "rsvp_reminder",
        "seating_update",
        "payment_reminder",
        "invitation",
        "save_the_date",
        "thank_you",
        "photo_gallery",
        "newsletter",
        "other",
    }
    assert kinds <= {kind.value for kind in MessageKind}


def test_python_callers_use_field_names_too() -> None:
    email = Email(
        sender=Address(email="a@example.com"),
        to=[Address(email="b@example.com")],
        subject="Hi",
        text="Hello",
        attachments=[Attachment(filename="a.txt", content=b"raw bytes")],
    )
    assert email.attachments[0].content == b"raw bytes"
    assert email.attachments[0].content_type == "text/plain"
    assert parse_email(email.to_payload()) == email


# Refused, naming the field

CRLF_CASES = [
    (valid(subject="Hi\r\nBcc: victim@example.com"), "subject"),
    (valid(subject="Hi\nthere"), "subject"),
    (valid(subject="Hi\0"), "subject"),
    (valid(to={"email": "a@example.com", "name": "Eve\r\nBcc: x@example.com"}), "to.0.name"),
    (valid(to="Eve\n <a@example.com>"), "to.0"),
    (valid(**{"from": {"email": "a@example.com", "name": "A\rB"}}), "from.name"),
    (valid(headers={"X-Note": "a\r\nBcc: victim@example.com"}), "headers.X-Note"),
    (valid(attachments=[{"filename": "a\r\n.pdf", "content": ""}]), "attachments.0.filename"),
    (valid(tags={"campaign": "june\n"}), "tags.campaign"),
    (valid(wedding={"wedding_id": "w\n1", "ceremony_at": CEREMONY}), "wedding.wedding_id"),
    (valid(idempotency_key="key\r\n"), "idempotency_key"),
]

INVALID_CASES = [
    *CRLF_CASES,
    (valid(**{"from": "not-an-address"}), "from.email"),
    (valid(to=["a@example.com", "b@example.com", "c@@example.com"]), "to.2.email"),
    (valid(cc=["nobody@localhost"]), "cc.0.email"),
    (valid(bcc="x@[127.0.0.1]"), "bcc.0.email"),
    (valid(reply_to="user@-bad-.example"), "reply_to.0.email"),
    (valid(to="jörg@example.com"), "to.0.email"),  # would need SMTPUTF8
    (valid(to=[]), "to"),
    (valid(to=None), "to"),
    (valid(subject=None), "subject"),
    (valid(subject="x" * 999), "subject"),
    (valid(text=None), "text"),
    (valid(text=" \n\t"), "text"),
    (valid(text="a\0b"), "text"),
    (valid(html="<p>\0</p>"), "html"),
    (valid(to=[f"g{i}@example.com" for i in range(101)]), "to"),
    (
        valid(
            to=[f"g{i}@example.com" for i in range(60)], cc=[f"c{i}@example.com" for i in range(41)]
        ),
        "cc",
    ),
    (valid(surprise=1), "surprise"),
    (valid(wedding={"wedding_id": "w", "ceremony_at": CEREMONY, "venue": "x"}), "wedding.venue"),
    (valid(to={"email": "a@example.com", "nickname": "A"}), "to.0.nickname"),
    (valid(send_at="2026-06-13T09:00:00"), "send_at"),
    (
        valid(wedding={"wedding_id": "w", "ceremony_at": "2026-06-13T15:00:00"}),
        "wedding.ceremony_at",
    ),
    (
        valid(wedding={"wedding_id": "w", "ceremony_at": CEREMONY, "timezone": "Mars/Olympus"}),
        "wedding.timezone",
    ),
    (
        valid(wedding={"wedding_id": "w", "ceremony_at": CEREMONY, "timezone": "../etc/passwd"}),
        "wedding.timezone",
    ),
    (
        valid(wedding={"wedding_id": "w", "ceremony_at": CEREMONY, "kind": "party"}),
        "wedding.kind",
    ),
    (valid(wedding={"ceremony_at": CEREMONY}), "wedding.wedding_id"),
    (valid(tenant="acme corp"), "tenant"),
    (valid(tenant=""), "tenant"),
    (valid(tenant="t" * 129), "tenant"),
    (valid(idempotency_key=""), "idempotency_key"),
    (valid(idempotency_key="k" * 257), "idempotency_key"),
    (valid(priority=101), "priority"),
    (valid(priority=-1), "priority"),
    (valid(headers={"Bad Name": "x"}), "headers.Bad Name"),
    (valid(headers={"X:Y": "x"}), "headers.X:Y"),
    (valid(headers={"Bcc": "victim@example.com"}), "headers.Bcc"),
    (valid(headers={"content-type": "text/html"}), "headers.content-type"),
    (valid(headers={"X-Emailq-Id": "forged"}), "headers.X-Emailq-Id"),
    (valid(headers={"X-A": "1", "x-a": "2"}), "headers.x-a"),
    (valid(tags={"no spaces": "x"}), "tags.no spaces"),
    (valid(tags={f"t{i}": "x" for i in range(51)}), "tags"),
    (
        valid(attachments=[{"filename": "a.pdf", "content": "not base64!"}]),
        "attachments.0.content",
    ),
    (valid(attachments=[{"filename": "", "content": ""}]), "attachments.0.filename"),
    (valid(attachments=[{"filename": " \t", "content": ""}]), "attachments.0.filename"),
    (valid(attachments=[{"filename": "a" * 256, "content": ""}]), "attachments.0.filename"),
    (
        valid(attachments=[{"filename": "a", "content": "", "content_type": "pdf"}]),
        "attachments.0.content_type",
    ),
    (
        valid(attachments=[{"filename": "a", "content": "", "content_type": "a/b; name=x"}]),
        "attachments.0.content_type",
    ),
    (
        valid(attachments=[{"filename": "a", "content": "", "content_id": "has space"}]),
        "attachments.0.content_id",
    ),
    (valid(attachments=[{"filename": "a", "content": "", "content_id": "x"}] * 2), "attachments"),
    (valid(headers={"X-Big": "x" * 101 * 1024}), "headers"),
]


@pytest.mark.parametrize(("data", "field"), INVALID_CASES)
def test_invalid_input_names_the_field(data: dict[str, Any], field: str) -> None:
    assert field in fields_of(data)
    assert field in fields_of(json.dumps(data, default=str))  # the JSON path says the same


def test_oversize_message_with_a_small_configured_limit() -> None:
    big_html = valid(html="<p>" + "x" * 5000 + "</p>")
    assert fields_of(big_html, max_message_bytes=4096) == ["html"]
    attached = valid(attachments=[{"filename": "a.bin", "content": b"\0" * 4000}])
    assert fields_of(attached, max_message_bytes=4096) == ["attachments"]
    assert parse_email(attached, max_message_bytes=8192).attachments[0].content == b"\0" * 4000


def test_module_default_limit_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_MESSAGE_BYTES", 1000)
    assert fields_of(valid(text="x" * 2000)) == ["text"]


def test_the_default_limit_is_ten_megabytes() -> None:
    assert message_module.MAX_MESSAGE_BYTES == 10 * 1024 * 1024
    almost = b"\0" * (7 * 1024 * 1024)  # base64 makes it ~9.6 MB
    assert parse_email(valid(attachments=[{"filename": "a.bin", "content": almost}]))
    over = b"\0" * (8 * 1024 * 1024)
    assert fields_of(valid(attachments=[{"filename": "a.bin", "content": over}])) == ["attachments"]


def test_error_lists_every_problem_and_does_not_leak_addresses() -> None:
    data = valid(to=["secret.guest@example", "ok@example.com"], subject="a\nb", extra=True)
    with pytest.raises(InvalidEmail) as caught:
        parse_email(data)
    error = caught.value
    assert isinstance(error, ValidationError | EmailqError | ValueError)
    assert [e.field for e in error.errors] == ["to.0.email", "subject", "extra"]
    assert error.field == "to.0.email"
    text = str(error)
    assert text.startswith("invalid email: ") and "subject: " in text and "extra: " in text
    assert "secret.guest" not in text
    assert error.__cause__ is None and error.__suppress_context__
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errors, str(copy)) == (error.errors, text)


@pytest.mark.parametrize("data", [b"{", b"[]", "null", b"\xff\xfe", '"text"', "{}" + "x"])
def test_bad_json_is_an_invalid_email(data: bytes | str) -> None:
    assert fields_of(data)


def test_non_mapping_input_is_an_invalid_email() -> None:
    with pytest.raises(InvalidEmail) as caught:
        parse_email([1, 2])  # type: ignore[arg-type]
    assert caught.value.errors == [FieldError("", "expected a JSON object, not list")]


# Payload round trip

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text",
        "html",
        "headers",
        "attachments",
        "tags",
        "tenant",
        "idempotency_key",
        "send_at",
        "wedding",
        "priority",
    ]
)


_nested = st.fixed_dictionaries(
    {},
    optional={
        "filename": _json,
        "content": _json,
        "content_type": _json,
        "content_id": _json,
        "wedding_id": _json,
        "ceremony_at": _json,
        "timezone": _json,
        "kind": _json,
        "email": st.text(max_size=30) | _json,
        "name": _json,
    },
)
_overrides = st.dictionaries(
    _field_names,
    _json | _nested | st.lists(_nested | st.text(max_size=30), max_size=3) | st.text(),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_field_names, _json) | _json | _overrides.map(lambda o: {**valid(), **o}))
def test_no_json_input_escapes_as_anything_but_invalid_email(value: Any) -> None:
    try:
        parse_email(json.dumps(value))
    except InvalidEmail as error:
        assert error.errors and all(isinstance(e.field, str) for e in error.errors)


# What a header-bound field takes: anything but C0 controls (HTAB aside), DEL and C1 controls
_HEADER_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_safe_text = st.text(max_size=40).filter(lambda s: not _HEADER_UNSAFE.search(s))
_addresses = st.builds(
    Address,
    email=st.sampled_from(["a@example.com", "b.c+d@sub.example.org", "x@bücher.example"]),
    name=st.none() | _safe_text,
)
_aware = st.datetimes(  # local times a day inside the model's range, whatever the offset
    min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30), timezones=st.timezones()
)
_attachments = st.builds(
    Attachment,
    filename=_safe_text.filter(str.strip),
    content=st.binary(max_size=300),
    content_type=st.sampled_from(["", "application/pdf", 'text/calendar; method="REQUEST"']),
    content_id=st.none()
    | st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8})?(@[a-z]{1,8})?", fullmatch=True),
)
_emails = st.builds(
    Email,
    sender=_addresses,
    to=st.lists(_addresses, min_size=1, max_size=3),
    cc=st.lists(_addresses, max_size=2),
    bcc=st.lists(_addresses, max_size=2),
    reply_to=st.lists(_addresses, max_size=2),
    subject=_safe_text,
    text=st.none() | st.text(min_size=1).filter(lambda s: s.strip() and "\0" not in s),
    html=st.just("<p>hi</p>"),
    headers=st.dictionaries(st.from_regex(r"X-[a-z0-9-]{1,10}", fullmatch=True), _safe_text),
    attachments=st.lists(_attachments, max_size=2, unique_by=lambda a: a.content_id or id(a)),
    tags=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), _safe_text, max_size=3),
    tenant=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    idempotency_key=st.none() | st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True),
    send_at=st.none() | _aware,
    wedding=st.none()
    | st.builds(
        WeddingContext,
        wedding_id=_safe_text.filter(bool),
        ceremony_at=_aware,
        timezone=st.none() | st.sampled_from(["Europe/Paris", "America/New_York", "UTC"]),
        kind=st.sampled_from(MessageKind),
    ),
    priority=st.none() | st.integers(0, 100),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_emails)
def test_payload_round_trip_is_exact(email: Email) -> None:
    payload = email.to_payload()
    back = Email.from_payload(payload)
    assert back == email
    assert back.to_payload() == payload
    assert parse_email(payload) == email  # intake accepts its own payloads unchanged


def test_payload_is_compact_json_with_the_from_alias() -> None:
    payload = parse_email(valid()).to_payload()
    assert b" " not in payload.replace(b"Ana & Ben", b"").replace(b"Our wedding", b"").replace(
        b"Dear guest,\\nsee you there.\\n", b""
    )
    assert json.loads(payload)["from"] == {"email": "hello@weddings.example", "name": "Ana & Ben"}


def test_datetimes_keep_their_instant_and_offset_through_the_payload() -> None:
    eastern = datetime(2026, 6, 13, 9, 30, tzinfo=ZoneInfo("America/New_York"))
    old = datetime(1920, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam"))  # +00:19:32 LMT
    email = parse_email(valid(send_at=eastern, wedding={"wedding_id": "w", "ceremony_at": old}))
    back = Email.from_payload(email.to_payload())
    assert back.send_at == eastern and back.send_at.utcoffset() == timedelta(hours=-4)
    assert back.send_at.tzinfo == timezone(timedelta(hours=-4))
    assert back.wedding is not None and back.wedding.ceremony_at == old
    assert back.wedding.timezone == "Europe/Amsterdam"


# -- guest lists: shared fields checked once, personal ones per guest, same answers ----------
_many = [f"g{i}@example.org" for i in range(99)]


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    return st.one_of(good, good, good, good, good, bad)  # about one value in six is bad


_personal = st.fixed_dictionaries(
    {"to": _mostly(st.sampled_from(["guest@example.org", "Guest <g@example.org>",
                                    ["a@example.com", "b@example.com"]]),
                   st.sampled_from(["broken", [], _many, "x\r\n@y.org"])),
     "subject": _mostly(_safe_text, st.sampled_from(["a\r\nBcc: x@y.org", "s" * 999]))},
    optional={
        "text": _mostly(st.text(min_size=1, max_size=50), st.sampled_from(["  ", "é" * 3000])),
        "html": _mostly(st.none() | st.just("<p>hi</p>"), st.sampled_from(["", "\0"])),
        "idempotency_key": _mostly(st.none() | st.just("run-7/3"),
                                   st.sampled_from([" spaced", "k" * 300])),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_emails, _personal, st.sampled_from([None, 3000]))
def test_a_personalised_email_is_what_parse_email_makes_of_the_whole(
    template: Email, personal: dict[str, Any], limit: int | None
) -> None:
    shared_data = json.loads(template.to_payload())
    for name in ("to", "subject", "text", "html", "idempotency_key"):
        shared_data.pop(name, None)
    whole: Email | InvalidEmail
    try:
        whole = parse_email(shared_data | personal, max_message_bytes=limit)
    except InvalidEmail as error:
        whole = error
    try:
        shared = parse_shared(shared_data, max_message_bytes=limit)
    except InvalidEmail:  # the shared part alone is too large for the limit
        assert isinstance(whole, InvalidEmail) and limit is not None
        return
    try:
        fast: Email | InvalidEmail = personalised(shared, personal, max_message_bytes=limit)
    except InvalidEmail as error:
        fast = error
    event("accepted" if isinstance(whole, Email) else "refused")
    if isinstance(whole, Email):
        assert isinstance(fast, Email) and fast == whole
        assert fast.to_payload() == whole.to_payload()
    else:
        assert isinstance(fast, InvalidEmail)
        assert fast.errors == whole.errors


def test_the_shared_part_is_never_refused_for_a_size_the_whole_would_pass() -> None:
    shared, guest = {"from": "a@example.org"}, {"to": "a@b.co", "subject": "", "text": "x"}
    limit = len(parse_email(shared | guest).to_payload())  # well under the estimate
    while True:  # the smallest limit the whole email passes
        try:
            parse_email(shared | guest, max_message_bytes=limit)
            break
        except InvalidEmail:
            limit += 1
    email = personalised(parse_shared(shared, max_message_bytes=limit), guest,
                         max_message_bytes=limit)  # fmt: skip
    assert email == parse_email(shared | guest, max_message_bytes=limit)


# -- the fast address path agrees with email-validator ----------------------------------------
_ATOM_CHARS = "abcXYZ019!#$%&'*+/=?^_`{|}~-."
_DOMAINS = ["example.org", "Example.COM", "mail.example.co.uk", "bücher.example",
            "xn--bcher-kva.example", "localhost", "a.test", "x.local", "1.2.3.4",
            "-bad.example", "ok-.example", "example",
            "EXAMPLE.org.", "a..b.example", "very-long-" + "x" * 60 + ".example"]  # fmt: skip


@settings(max_examples=1000)
@given(
    local=st.text(alphabet=_ATOM_CHARS + '" ()<>,;:@[]\\', min_size=0, max_size=70),
    domain=st.sampled_from(_DOMAINS) | st.text(alphabet="abc.-1é", min_size=0, max_size=20),
)
def test_the_fast_address_path_gives_email_validators_answer(local: str, domain: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    from emailq.message import _checked_address

    address = f"{local}@{domain}"
    try:
        expected = (validate_email(address, check_deliverability=False,
                                   allow_smtputf8=False).normalized, True)  # fmt: skip
    except EmailNotValidError:
        expected = ("", False)
    normalized, problem = _checked_address(address)
    assert (normalized, not problem) == expected


# -- issue 11: the security/fuzz review of the intake, one test (at least) per finding ---------
def _in(field: str, value: str) -> dict[str, Any]:
    """An email whose header-bound ``field`` holds ``value``."""
    attachment: dict[str, Any] = {"filename": "a.pdf", "content": ""}
    return {
        "subject": valid(subject=value),
        "to.0.name": valid(to={"email": "a@example.com", "name": value}),
        "from": valid(**{"from": f"{value} <a@example.com>"}),
        "headers.X-Note": valid(headers={"X-Note": value}),
        "headers": valid(headers={f"X-{value}": "x"}),
        "tags.campaign": valid(tags={"campaign": value}),
        "tags": valid(tags={value: "x"}),
        "attachments.0.filename": valid(attachments=[attachment | {"filename": value}]),
        "attachments.0.content_type": valid(
            attachments=[attachment | {"content_type": f'text/plain; x="{value}"'}]
        ),
        "attachments.0.content_id": valid(attachments=[attachment | {"content_id": value}]),
        "wedding.wedding_id": valid(wedding={"wedding_id": value, "ceremony_at": CEREMONY}),
    }[field]


_HEADER_FIELDS = ["subject", "to.0.name", "from", "headers.X-Note", "headers", "tags.campaign",
                  "tags", "attachments.0.filename", "attachments.0.content_type",
                  "attachments.0.content_id", "wedding.wedding_id"]  # fmt: skip


@pytest.mark.parametrize("char", ["\0", "\r", "\n", "\x01", "\x1b", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize("field", _HEADER_FIELDS)
def test_issue11_1_nul_and_control_bytes_never_reach_a_header(field: str, char: str) -> None:
    fields = fields_of(_in(field, f"a{char}b"))
    assert [name for name in fields if name.startswith(field)], fields


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        ('text/plain; x="a\0b"', "NUL in a quoted parameter"),
        ('text/plain; x="é"', "non-ASCII: accepted, then unsendable"),
        ('text/plain; x="=?utf-8?b?DQo=?="', "an encoded-word parsers decode to CR LF"),
        ("text/plain; x*=utf-8''%0D%0A", "an RFC 2231 parameter parsers decode to CR LF"),
        ('text/plain; x="a\\"b"', "a quoted-pair"),
        ("text/plain; x=a b", "a space in a token"),
        ("text/plain;", "a ';' with no parameter"),
        ("text/plain; x=\x0b", "a control"),
        ("tëxt/plain", "non-ASCII in the type"),
    ],
)
def test_issue11_1_content_type_follows_rfc_2045(content_type: str, why: str) -> None:
    attachment = {"filename": "a.txt", "content": "", "content_type": content_type}
    assert fields_of(valid(attachments=[attachment])) == ["attachments.0.content_type"], why


@pytest.mark.parametrize(
    "content_id", ["=?utf-8?b?DQo=?=", "a@=?utf-8?q?=0D?=", "two@@ats", "a..b", ".a", "a b", "é"]
)
def test_issue11_1_content_id_is_a_msg_id(content_id: str) -> None:
    attachment = {"filename": "a.png", "content": "", "content_id": content_id}
    assert fields_of(valid(attachments=[attachment])) == ["attachments.0.content_id"]


def test_issue11_1_header_bound_values_in_their_grammar_are_accepted() -> None:
    email = parse_email(
        valid(
            subject="Tab\there, U+2028\u2028and non-ASCII: é 结婚",
            headers={"X-Note": "=?utf-8?q?encoded_by_the_renderer?="},
            attachments=[
                {"filename": "Plan — été.pdf", "content": "",
                 "content_type": 'application/pdf; x-a=b; x-q="a b;c=d"'},
                {"filename": "logo.png", "content": "", "content_id": "<logo.v2@weddings.example>"},
                {"filename": "map.png", "content": "", "content_id": "map"},
            ],
        )
    )  # fmt: skip
    assert [a.content_id for a in email.attachments] == [None, "logo.v2@weddings.example", "map"]


@pytest.mark.parametrize("field", [*_HEADER_FIELDS, "text", "html", "to.0.email"])
def test_issue11_2_lone_surrogates_are_refused_naming_the_field(field: str) -> None:
    bodies = {"text": valid(text="a\ud800b"), "html": valid(html="<p>\udfff</p>"),
              "to.0.email": valid(to="a\ud800b@example.com")}  # fmt: skip
    data = bodies.get(field) or _in(field, "a\ud800b")
    with pytest.raises(InvalidEmail) as caught:
        parse_email(data)
    errors = caught.value.errors
    assert [e for e in errors if e.field.startswith(field.removesuffix(".email"))], errors
    for error in errors:  # the problem document that reports them is UTF-8
        (error.field + error.message).encode("utf-8")


def test_issue11_2_an_unknown_key_with_a_lone_surrogate_is_an_invalid_email() -> None:
    with pytest.raises(InvalidEmail) as caught:
        parse_email(valid(**{"x\ud800": 1}))
    for error in caught.value.errors:
        (error.field + error.message).encode("utf-8")


@pytest.mark.parametrize(
    "at",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1899-12-31T23:59:59Z",
     "2201-01-01T00:00:00Z", "2200-12-31T23:00:00-14:00"],
)  # fmt: skip
def test_issue11_2_datetimes_out_of_range_are_refused_naming_the_field(at: str) -> None:
    assert fields_of(valid(wedding={"wedding_id": "w", "ceremony_at": at})) == [
        "wedding.ceremony_at"
    ]
    assert fields_of(valid(send_at=at)) == ["send_at"]
    kiritimati = datetime(9999, 12, 31, 23, 59, tzinfo=ZoneInfo("Pacific/Kiritimati"))  # +14
    assert fields_of(valid(send_at=kiritimati)) == ["send_at"]


def test_issue11_2_the_range_ends_are_accepted_and_round_trip() -> None:
    for at in ("1900-01-01T00:00:00Z", "2200-12-31T23:59:59Z", "1900-01-01T00:19:32+00:19"):
        email = parse_email(valid(send_at=at, wedding={"wedding_id": "w", "ceremony_at": at}))
        assert Email.from_payload(email.to_payload()) == email


def test_issue11_4_validation_errors_never_carry_input_values() -> None:
    secret = "secret.guest@example"  # no dot in the domain: refused
    with pytest.raises(PydanticValidationError) as caught:
        Email.model_validate(valid(to=[secret, "Jo Secret <jo@@example.com>"]))
    for text in (str(caught.value), repr(caught.value)):
        assert "secret" not in text.lower() and "input_value" not in text
    with pytest.raises(PydanticValidationError) as caught:
        Address(email="x@example.com", name="Secret\r\nName")
    assert "secret" not in str(caught.value).lower()
    # The worker reads payloads as trusted and buries an unreadable one with the error's
    # text as the reason, which is stored and logged.
    payload = json.dumps(valid(to={"email": "secret.guest@example.org"}, subject=["x"]))
    with pytest.raises(ValueError) as unreadable:
        Email.from_payload(payload)
    assert "secret" not in str(unreadable.value)
    from emailq.api.batch import BatchRequest

    with pytest.raises(PydanticValidationError) as caught:
        BatchRequest.model_validate({"template": [], "recipients": [{"to": "x", "cc": "secret"}]})
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ({"email": "a@example.com", "name": "A\u00a0B\u3000C\u2028D"}, "A\u00a0B\u3000C\u2028D"),
        ("\u00a0Ana\u00a0 <a@example.com>", "\u00a0Ana\u00a0"),
        ({"email": "a@example.com", "name": "\u3000"}, "\u3000"),
        ({"email": "a@example.com", "name": " Ana \t  Ben\t"}, "Ana Ben"),  # SP and HTAB only
    ],
)
def test_issue11_6_display_names_keep_non_ascii_spaces(given: Any, name: str) -> None:
    assert parse_email(valid(to=given)).to[0].name == name


@pytest.mark.parametrize("char", ["\x1b", "\x7f", "\x85", "\x9b", "\x00", "\x0b", "\x1f"])
def test_issue11_6_display_names_refuse_c0_c1_and_del(char: str) -> None:
    assert fields_of(valid(to={"email": "a@example.com", "name": f"A{char}B"})) == ["to.0.name"]
    assert fields_of(valid(cc=f"A{char}B <a@example.com>")) == ["cc.0"]


@pytest.mark.parametrize(
    "content_type",
    ["multipart/mixed", "Multipart/Related; x=1", "multipart/voice-message", "message/partial",
     "message/external-body; access-type=URL"],
)  # fmt: skip
def test_issue11_6_multipart_and_fragment_attachments_are_refused(content_type: str) -> None:
    attachment = {"filename": "a.bin", "content": b"x", "content_type": content_type}
    assert fields_of(valid(attachments=[attachment])) == ["attachments.0.content_type"]


EML = b"From: a@example.org\nTo: b@example.org\nSubject: Forwarded\n\nThe body.\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [(EML, "message/rfc822"),
     (EML.replace(b"\n", b"\r\n"), "message/rfc822"),
     (EML + "é".encode(), "application/octet-stream"),  # 8-bit: would need 8BITMIME
     (EML + b"\0", "application/octet-stream"),
     (EML + b"x" * 999, "application/octet-stream")],  # a line over 998
)  # fmt: skip
def test_issue11_6_a_guessed_message_type_holds_only_for_7bit_content(
    content: bytes, expected: str
) -> None:
    for sent in (content, base64.b64encode(content).decode()):
        email = parse_email(valid(attachments=[{"filename": "fwd.eml", "content": sent}]))
        assert email.attachments[0].content_type == expected


@pytest.mark.parametrize("content", [EML + "é".encode(), EML + b"\0", EML + b"x" * 999])
def test_issue11_6_an_explicit_message_type_needs_7bit_content(content: bytes) -> None:
    attachment = {"filename": "fwd.eml", "content": content, "content_type": "message/rfc822"}
    assert fields_of(valid(attachments=[attachment])) == ["attachments.0.content_type"]


# Custom headers: an allow list plus X-* (issue 11: a deny list let Received through)


@pytest.mark.parametrize(
    "name", ["Received", "Authentication-Results", "DKIM-Signature", "Sender", "Resent-From"]
)
def test_headers_outside_the_allow_list_are_refused(name: str) -> None:
    assert fields_of(valid(headers={name: "from mx.example by evil"})) == [f"headers.{name}"]


def test_x_headers_and_list_headers_are_accepted() -> None:
    headers = {"X-Wedding": "w-42", "list-unsubscribe": "<https://weddings.example/u/1>",
               "In-Reply-To": "<a@b.example>", "Auto-Submitted": "auto-generated"}  # fmt: skip
    assert parse_email(valid(headers=headers)).headers == headers
