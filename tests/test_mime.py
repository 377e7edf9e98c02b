"""Rendering: every message is read back with the standard library's parser and compared."""

from __future__ import annotations

import email
import email.header
import email.policy
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailq.errors import InvalidEmail
from emailq.message import Address, Attachment, Email, parse_email
from emailq.mime import envelope, render

DATE = datetime(2026, 6, 13, 15, 4, 5, tzinfo=timezone(timedelta(hours=2)))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def make(**changes: Any) -> Email:
    data: dict[str, Any] = {
        "from": "Ana & Ben <hello@weddings.example>",
        "to": "Guest <guest@example.org>",
        "subject": "Our wedding",
        "text": "Dear guest,\nsee you there.\n",
    }
    data.update(changes)
    return parse_email({k: v for k, v in data.items() if v is not None})


def wire(email_: Email, message_id: str = "01jx5m0abc", **options: Any) -> bytes:
    """Render, and check the rules every message must keep."""
    data = render(email_, message_id=message_id, domain="mail.weddings.example", **options)
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert max(map(len, data.split(b"\r\n"))) <= 998
    head = data.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")  # headers are 7-bit
    assert not re.search(rb"(?im)^bcc:", data)
    return data


def parse(data: bytes) -> EmailMessage:
    message = cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))
    assert not [part.defects for part in message.walk() if part.defects]
    return message


def content(part: EmailMessage) -> Any:
    value = part.get_content()
    # RFC line breaks are CRLF on the wire; the parser hands them back as they came.
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def lines(text: str) -> str:
    """What a body becomes: every CRLF, CR or LF is one line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def filename(part: EmailMessage) -> str | None:
    """The Content-Disposition filename, decoded (RFC 2231) and unquoted once.

    Not get_filename(): it unquotes twice, so "<x>" would come back as "x".
    """
    disposition = part["Content-Disposition"]
    if disposition is None:
        return None
    name = disposition.params.get("filename")
    assert part["Content-Type"].params.get("name") == name
    return cast(str | None, name)


def header_lines(data: bytes) -> Iterator[bytes]:
    yield from data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


# Structure


def test_text_only_with_every_header() -> None:
    email_ = make(
        cc=["Cc One <cc1@example.org>", "cc2@example.org"],
        bcc="hidden@example.org",
        reply_to="Planner <planner@weddings.example>",
        headers={"List-Unsubscribe": "<https://weddings.example/u/1>", "X-Wedding": "w-42"},
    )
    message = parse(wire(email_, date=DATE))
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert content(message) == "Dear guest,\nsee you there.\n"
    assert message["From"].addresses[0].display_name == "Ana & Ben"
    assert message["From"].addresses[0].addr_spec == "hello@weddings.example"
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Guest", "guest@example.org")
    ]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("Cc One", "cc1@example.org"),
        ("", "cc2@example.org"),
    ]
    assert message["Reply-To"].addresses[0].addr_spec == "planner@weddings.example"
    assert message["Subject"] == "Our wedding"
    assert message["Date"] == format_datetime(DATE)
    assert message["Date"].datetime == DATE
    assert message["Message-ID"] == "<01jx5m0abc@mail.weddings.example>"
    assert message["MIME-Version"] == "1.0"
    assert message["X-Emailq-Id"] == "01jx5m0abc"
    assert message["List-Unsubscribe"] == "<https://weddings.example/u/1>"
    assert message["X-Wedding"] == "w-42"
    assert message["Bcc"] is None
    assert not message.defects


def test_html_only() -> None:
    message = parse(wire(make(text=None, html="<p>Hello</p>")))
    assert message.get_content_type() == "text/html"
    assert content(message) == "<p>Hello</p>"


def test_text_and_html_make_multipart_alternative_text_first() -> None:
    message = parse(wire(make(text="Plain", html="<p>HTML</p>")))
    assert message.get_content_type() == "multipart/alternative"
    text, html = cast(list[EmailMessage], message.get_payload())
    assert (text.get_content_type(), content(text)) == ("text/plain", "Plain")
    assert (html.get_content_type(), content(html)) == ("text/html", "<p>HTML</p>")


def test_attachments_make_multipart_mixed_with_identical_bytes() -> None:
    blob = os.urandom(100_000)
    email_ = make(
        html="<p>HTML</p>",
        attachments=[
            {"filename": "menu.pdf", "content": blob},
            {
                "filename": "invite.ics",
                "content": b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                "content_type": 'text/calendar; method="REQUEST"',
            },
        ],
    )
    data = wire(email_)
    message = parse(data)
    assert message.get_content_type() == "multipart/mixed"
    body, pdf, ics = cast(list[EmailMessage], message.get_payload())
    assert body.get_content_type() == "multipart/alternative"
    assert (pdf.get_content_type(), pdf.get_filename(), pdf.get_content_disposition()) == (
        "application/pdf",
        "menu.pdf",
        "attachment",
    )
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_payload(decode=True) == blob
    assert ics.get_content_type() == "text/calendar" and ics.get_param("method") == "REQUEST"
    assert ics.get_payload(decode=True) == b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
    base64_lines = data.split(b"\r\n\r\n")[-2].split(b"\r\n")  # the .ics part's body
    assert base64_lines and all(len(line) <= 76 for line in base64_lines)
    assert all(len(line) == 76 for line in pdf_body_lines(data)[:-1])


def pdf_body_lines(data: bytes) -> list[bytes]:
    start = data.index(b'filename="menu.pdf"')
    body = data[data.index(b"\r\n\r\n", start) + 4 :]
    return body[: body.index(b"\r\n--")].split(b"\r\n")


def test_inline_images_go_in_multipart_related_with_the_html() -> None:
    email_ = make(
        html='<img src="cid:logo@weddings">',
        attachments=[
            {"filename": "logo.png", "content": PNG, "content_id": "logo@weddings"},
            {"filename": "menu.pdf", "content": b"%PDF"},
        ],
    )
    message = parse(wire(email_))
    body, pdf = cast(list[EmailMessage], message.get_payload())
    _, related = cast(list[EmailMessage], body.get_payload())
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    html, logo = cast(list[EmailMessage], related.get_payload())
    assert content(html) == '<img src="cid:logo@weddings">'
    assert logo["Content-ID"] == "<logo@weddings>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_payload(decode=True) == PNG
    assert pdf.get_payload(decode=True) == b"%PDF"


def test_inline_image_without_text_or_other_attachments() -> None:
    email_ = make(
        text=None,
        html="<p>x</p>",
        attachments=[{"filename": "a.png", "content": PNG, "content_id": "a"}],
    )
    message = parse(wire(email_))
    assert message.get_content_type() == "multipart/related"


def test_inline_part_without_html_is_attached() -> None:
    email_ = make(attachments=[{"filename": "a.png", "content": PNG, "content_id": "a"}])
    message = parse(wire(email_))
    assert message.get_content_type() == "multipart/mixed"
    _, image = cast(list[EmailMessage], message.get_payload())
    assert image.get_content_disposition() == "attachment" and image["Content-ID"] == "<a>"


# Encodings


def test_non_ascii_subject_and_names_use_encoded_words_and_fold() -> None:
    subject = "Changement de cérémonie : la salle des fêtes est fermée, rendez-vous à l'église"
    email_ = make(
        subject=subject,
        **{"from": "Zoë & Jürgen Müller <hello@weddings.example>"},
        to=["Ωμέγα <omega@example.org>", "李小龍 <lee@example.org>", "Plain Name <p@example.org>"],
    )
    data = wire(email_)
    message = parse(data)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Zoë & Jürgen Müller"
    assert [a.display_name for a in message["To"].addresses] == ["Ωμέγα", "李小龍", "Plain Name"]
    assert all(len(line) <= 78 for line in header_lines(data))
    assert b"=?utf-8?b?" in data


def test_long_ascii_subject_folds_at_spaces() -> None:
    subject = " ".join(["Reminder:"] + ["RSVP by Friday"] * 20) + "  end"
    data = wire(make(subject=subject))
    assert parse(data)["Subject"] == subject
    assert all(len(line) <= 78 for line in header_lines(data))
    assert b"=?" not in data.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "subject",
    ["", " leading", "trailing ", "tab\there", "=?utf-8?q?looks_encoded?=", "x" * 990, "a\u2028b"],
)
def test_awkward_subjects_round_trip(subject: str) -> None:
    assert parse(wire(make(subject=subject)))["Subject"] == subject


def test_non_ascii_bodies_are_quoted_printable_or_base64() -> None:
    latin = "Chère invitée,\nle dîner est à 20 h.\n"
    cjk = "結婚式のご案内\n" * 20
    message = parse(wire(make(text=latin, html=cjk)))
    text, html = cast(list[EmailMessage], message.get_payload())
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "base64"  # smaller than QP for CJK
    assert (content(text), content(html)) == (latin, cjk)


def test_long_lines_and_line_endings_are_encoded() -> None:
    long_line = "word " * 400  # 2000 characters, no line break
    text = f"first\r\nsecond\rthird\n{long_line}\n.\n..leading dots stay\nlast"
    data = wire(make(text=text))
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(message) == lines(text)


def test_seven_bit_body_is_sent_as_is() -> None:
    text = "Hello,\n\n. a line with a leading dot\nSee you at 3 pm.\n"
    data = wire(make(text=text))
    assert data.endswith(text.replace("\n", "\r\n").encode())
    assert parse(data)["Content-Transfer-Encoding"] == "7bit"


def test_filenames_non_ascii_long_or_quoted() -> None:
    names = [
        "menu.pdf",
        'The "Best" day\\.pdf',
        "Plan de table — mariage.pdf",
        "👰" * 40 + ".png",
        "x" * 200 + ".txt",
    ]
    email_ = make(attachments=[{"filename": n, "content": b"data"} for n in names])
    data = wire(email_)
    parts = cast(list[EmailMessage], parse(data).get_payload())[1:]
    assert [filename(p) for p in parts] == names
    assert parts[0].get_filename() == "menu.pdf"
    assert all(len(line) <= 78 for line in data.split(b"\r\n") if line.startswith(b" filename"))


def test_idn_domain_is_punycode_on_the_wire() -> None:
    email_ = make(to="Jörg <jorg@bücher.example>", bcc="x@bücher.example")
    data = wire(email_)
    assert parse(data)["To"].addresses[0].addr_spec == "jorg@xn--bcher-kva.example"
    assert envelope(email_) == (
        "hello@weddings.example",
        ["jorg@xn--bcher-kva.example", "x@xn--bcher-kva.example"],
    )


def test_envelope_has_bcc_once_each_and_headers_do_not() -> None:
    email_ = make(to=["a@example.org", "b@example.org"], cc="a@example.org", bcc="c@example.org")
    assert envelope(email_) == (
        "hello@weddings.example",
        ["a@example.org", "b@example.org", "c@example.org"],
    )
    assert b"c@example.org" not in wire(email_)


def test_long_display_name_is_split_per_rfc_2047() -> None:
    # Python 3.11's address parser adds a space between adjacent encoded-words (gh-128110),
    # so this one is read back with the RFC 2047 decoder in email.header instead.
    name = "Alexandra Wilhelmina von Hohenzollern-Sigmaringen und Müller-Lüdenscheidt"
    data = wire(make(to=f"{name} <a@example.org>"))
    raw = _raw_header(data, b"To")
    phrase = raw.rsplit(" <", 1)[0]
    assert str(email.header.make_header(email.header.decode_header(phrase))) == name
    assert all(len(line) <= 78 for line in header_lines(data))


def _raw_header(data: bytes, name: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    return next(line for line in unfolded.split("\r\n") if line.startswith(name.decode() + ":"))[
        len(name) + 2 :
    ]


def test_custom_header_values_non_ascii_and_long() -> None:
    headers = {"X-Couple": "Zoë & Jürgen", "X-Long": " ".join(["token"] * 60), "X-Url": "u" * 900}
    data = wire(make(headers=headers))
    message = parse(data)
    assert {name: message[name] for name in headers} == headers


# Boundaries, ids and dates


def test_boundary_never_collides_with_the_content(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = bytes(12)
    text = f"a line that happens to be a boundary:\n--=_{taken.hex()}\n"
    randoms = iter([taken, taken, b"\x01" * 12, b"\x02" * 12])
    monkeypatch.setattr("emailq.mime.os.urandom", lambda n: next(randoms))
    message = parse(wire(make(text=text, html="<p>x</p>")))
    assert message.get_boundary() == "=_" + "01" * 12
    assert content(cast(list[EmailMessage], message.get_payload())[0]) == text


def test_boundaries_are_random() -> None:
    email_ = make(html="<p>x</p>")
    assert parse(wire(email_)).get_boundary() != parse(wire(email_)).get_boundary()


def test_default_date_is_now_in_utc() -> None:
    message = parse(wire(make()))
    assert abs(message["Date"].datetime - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "options",
    [
        {"message_id": "bad id", "domain": "example.org"},
        {"message_id": "id", "domain": "example.org>\r\nBcc: x@example.com"},
        {"message_id": "id", "domain": "example.org", "date": datetime(2026, 1, 1)},
    ],
)
def test_render_refuses_unsafe_arguments(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        render(make(), **options)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: victim@example.com"),
        ("to", "Eve\r\nBcc: victim@example.com <eve@example.com>"),
        ("headers", {"X-A": "1\r\nBcc: victim@example.com"}),
        ("attachments", [{"filename": "a\r\nBcc: v@example.com", "content": ""}]),
    ],
)
def test_header_injection_is_refused_before_rendering(field: str, value: Any) -> None:
    with pytest.raises(InvalidEmail) as caught:
        make(**{field: value})
    assert caught.value.errors[0].field.startswith(field)


# Property: whatever text comes in, the parser reads the same text back

# What a header-bound field takes: anything but C0 controls (HTAB aside), DEL and C1 controls
_HEADER_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_no_breaks = st.text().filter(lambda s: not _HEADER_UNSAFE.search(s))
_body = st.text(min_size=1).filter(lambda s: s.strip() and "\0" not in s)


@settings(max_examples=300, deadline=None)
@given(
    subject=_no_breaks.filter(lambda s: len(s) <= 998),
    text=_body,
    html=st.none() | _body,
    name=st.text(max_size=11).filter(lambda s: not _HEADER_UNSAFE.search(s)),
    header=_no_breaks,
)
def test_arbitrary_text_round_trips(
    subject: str, text: str, html: str | None, name: str, header: str
) -> None:
    email_ = make(
        subject=subject,
        text=text,
        html=html,
        to={"email": "guest@example.org", "name": name},
        headers={"X-Note": header},
    )
    message = parse(wire(email_))
    assert message["Subject"] == subject
    assert message["X-Note"] == header
    assert message["To"].addresses[0].display_name == (email_.to[0].name or "")
    parts = [message] if html is None else cast(list[EmailMessage], message.get_payload())
    assert [content(p) for p in parts] == [lines(b) for b in (text, html) if b is not None]


_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_content_ids = st.from_regex(
    rf"{_ATEXT}{{1,12}}(\.{_ATEXT}{{1,8}})?(@{_ATEXT}{{1,8}}(\.{_ATEXT}{{1,8}})?)?", fullmatch=True
).filter(lambda s: "=?" not in s)
_attachment = st.fixed_dictionaries(
    {
        "filename": st.text(min_size=1, max_size=255).filter(
            lambda s: s.strip() and not _HEADER_UNSAFE.search(s)
        ),
        "content": st.binary(max_size=500),
        "content_id": st.none() | _content_ids,
    }
)


@settings(max_examples=200, deadline=None)
@given(
    attachments=st.lists(
        _attachment,
        max_size=4,
        unique_by=(lambda a: a["filename"].strip(), lambda a: a["content_id"] or id(a)),
    ),
    html=st.none() | _body,
)
def test_arbitrary_attachments_round_trip(
    attachments: list[dict[str, Any]], html: str | None
) -> None:
    email_ = make(html=html, attachments=attachments)
    parts = [p for p in parse(wire(email_)).walk() if filename(p) is not None]
    by_name = {a.filename: a for a in email_.attachments}  # the model strips the edges
    assert sorted(cast(str, filename(p)) for p in parts) == sorted(by_name)
    for part in parts:
        expected = by_name[cast(str, filename(part))]
        assert part.get_payload(decode=True) == expected.content
        assert part["Content-ID"] == (f"<{expected.content_id}>" if expected.content_id else None)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=256).filter(lambda s: not _HEADER_UNSAFE.search(s)))
def test_long_display_names_decode_per_rfc_2047(name: str) -> None:
    email_ = make(to={"email": "guest@example.org", "name": name})
    expected = email_.to[0].name
    data = wire(email_)
    raw = _raw_header(data, b"To")
    if expected is None:
        assert raw == "guest@example.org"
        return
    phrase = raw.rsplit(" <", 1)[0]
    if phrase.startswith("=?"):
        decoded = str(email.header.make_header(email.header.decode_header(phrase)))
    else:
        decoded = parse(data)["To"].addresses[0].display_name
    assert decoded == expected


# Issue 11: the security/fuzz review of the intake, one test (at least) per finding


def compat32(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def decoded(header_value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(header_value)))


def test_issue11_6_non_ascii_spaces_in_display_names_round_trip() -> None:
    name = "Ana\u00a0&\u3000Ben\u2028Müller"
    data = wire(make(to={"email": "a@example.org", "name": name}))
    assert _raw_header(data, b"To").startswith("=?utf-8?b?")
    assert parse(data)["To"].addresses[0].display_name == name
    assert decoded(compat32(data)["To"].rsplit(" <", 1)[0]) == name


def _attached(**fields: Any) -> Email:
    """An email with one attachment built as is: what a payload read back as trusted holds."""
    values = {"filename": "a.txt", "content": b"x", "content_type": "text/plain"} | fields
    return make().model_copy(update={"attachments": [Attachment.model_construct(**values)]})


def _trusted(**fields: Any) -> Email:
    return make().model_copy(update=fields)


@pytest.mark.parametrize(
    ("email_", "header"),
    [
        (lambda: _attached(content_type='text/plain; x="a\0b"'), "Content-Type"),
        (lambda: _attached(content_type='text/plain; x="é"'), "Content-Type"),
        (lambda: _attached(content_type="text/plain;\r\n x=1"), "Content-Type"),
        (lambda: _attached(content_id="a\r\nBcc: v@example.com"), "Content-ID"),
        (lambda: _attached(filename="a\r\nb.txt"), "Content-Disposition"),
        (lambda: _attached(filename="\ud800.txt"), "Content-Disposition"),
        (lambda: _trusted(subject="Hi\r\nBcc: v@example.com"), "Subject"),
        (lambda: _trusted(subject="é\0"), "Subject"),
        (lambda: _trusted(subject="\ud800"), "Subject"),
        (lambda: _trusted(headers={"X-A": "é\nb"}), "X-A"),
        (lambda: _trusted(headers={"X-A\r\nBcc": "v@example.com"}), "header's name"),
        (lambda: _trusted(headers={"X A": "b"}), "header's name"),
        (lambda: _trusted(to=[Address.model_construct(name="Ève\r\nBcc: v@example.com",
                                                      email="a@example.org")]),
         "To"),
    ],
)  # fmt: skip
def test_issue11_1_the_renderer_refuses_unsafe_headers_whatever_path(
    email_: Any, header: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(header)) as caught:
        render(email_(), message_id="01jx", domain="example.org")
    assert "v@example.com" not in str(caught.value)  # a value is never repeated


@pytest.mark.parametrize(
    ("lines", "header"),
    [
        (["Subject: a\r\nBcc: v@example.com"], "Subject"),
        (["From: a@example.org", "X-A: a\0b"], "X-A"),
        (["X-A: é"], "X-A"),
        (["X-A: a\rb"], "X-A"),
        (["X-A: a\nb"], "X-A"),
        (["X-A: a\x1bb"], "X-A"),
        (["X-A: a\x7f"], "X-A"),
    ],
)
def test_issue11_1_the_last_check_names_the_header(lines: list[str], header: str) -> None:
    from emailq.mime import _head

    with pytest.raises(ValueError, match=f"the {header} header") as caught:
        _head(lines)
    assert "v@example.com" not in str(caught.value)
    assert _head(["Subject: a\r\n b", "X-A: \tc"]) == b"Subject: a\r\n b\r\nX-A: \tc\r\n\r\n"


@pytest.mark.parametrize(
    "address",
    ["x@example.org>\r\nBcc: v@example.com", "x@example.org>", "<x@example.org", "a b@example.org",
     "x@example.org, v@example.com", '"x"@example.org', "x@[127.0.0.1]", "x@exa mple.org",
     "x@example.org\0", "jörg@example.org", "", "x"],
)  # fmt: skip
def test_issue11_6_trusted_payloads_cannot_smuggle_addresses(address: str) -> None:
    payload = json.dumps(
        {"from": "a@example.org", "to": {"email": address}, "subject": "s", "text": "t"}
    )
    email_ = Email.from_payload(payload)  # trusted: the model's address checks are skipped
    with pytest.raises(ValueError, match=r"^To: ") as caught:
        render(email_, message_id="01jx", domain="example.org")
    assert "v@example.com" not in str(caught.value)
    with pytest.raises(ValueError, match="RCPT TO"):
        envelope(email_)


@pytest.mark.parametrize("message_id", ["a..b", ".a", "a.", ".", "a b", "x" * 129, "é"])
def test_issue11_6_message_id_parts_are_dot_atoms(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        render(make(), message_id=message_id, domain="example.org")
    for ok in ("01jx5m0abc", "a.b.c", "a+b_c-d"):
        assert parse(wire(make(), message_id=ok))["Message-ID"] == f"<{ok}@mail.weddings.example>"


@pytest.mark.parametrize(
    "text",
    ["x" * 74 + " \né",  # b2a_qp wrote "x"*74 + "=20": 77 characters
     "é" + "x" * 69 + "\t\né",  # "=C3=A9" + 69 + "=09": 78
     "é" + "x" * 69 + " ",  # 78, at the very end
     ("word " * 15 + "x" * 73 + "  \n") * 3 + "é",
     "==" + "x" * 68 + " \t\né"],  # "=3D=3D" + 68 + " =09": an escape at the cut
)  # fmt: skip
def test_issue11_6_quoted_printable_lines_are_at_most_76(text: str) -> None:
    data = wire(make(text=text))
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(map(len, body.split(b"\r\n"))) <= 76
    assert content(message) == text
    assert compat32(data).get_payload(decode=True).decode() == text.replace("\n", "\r\n")


_line_ending_in_whitespace = st.builds(
    lambda start, length, end: start + "x" * length + end,
    st.sampled_from(["", "é", "=", "é=", " "]),
    st.integers(60, 80),
    st.sampled_from(["", " ", "\t", "  ", " \t", "\t "]),
)
_mostly_ascii_lines = st.lists(_line_ending_in_whitespace, min_size=1, max_size=4).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(_mostly_ascii_lines.filter(str.strip))
def test_issue11_6_quoted_printable_lines_fit_for_any_text(text: str) -> None:
    data = wire(make(text=text))
    if parse(data)["Content-Transfer-Encoding"] == "quoted-printable":
        assert max(map(len, data.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))) <= 76
    assert content(parse(data)) == lines(text)


def _starts_folded(data: bytes, header: str) -> bool:
    """Whether the value starts on a folded line: a long name leaves an encoded-word no
    room beside it, and Python's parser keeps that fold's space (see mime.py)."""
    return f"{header}:".encode() in header_lines(data)


def _encoded_lines_fit(data: bytes) -> None:
    for line in header_lines(data):
        assert b"=?" not in line or len(line) <= 76, line


@pytest.mark.parametrize(
    ("header", "value"),
    [("Subject", "Changement de cérémonie : la salle des fêtes est fermée, rendez-vous"),
     ("X-" + "h" * 70, "Zoë"),  # no room on the name's line: the word goes on the next
     ("X-" + "h" * 60, "Zoë & Jürgen Müller, Ωμέγα, 李小龍")],
)  # fmt: skip
def test_issue11_6_encoded_word_lines_are_at_most_76(header: str, value: str) -> None:
    fields = {"subject": value} if header == "Subject" else {"headers": {header: value}}
    data = wire(make(**fields))
    _encoded_lines_fit(data)
    moved = " " if _starts_folded(data, header) else ""
    assert parse(data)[header] == moved + value
    assert decoded(compat32(data)[header]) == value


def test_issue11_6_encoded_word_lines_in_address_headers_are_at_most_76() -> None:
    to = ["Zoë Ünal <zoe.uenal.with.a.long.address@example.org>", "Ωμέγα <o@example.org>",
          "李小龍 <lee@example.org>", "Plain Name <p@example.org>"]  # fmt: skip
    data = wire(make(to=to, **{"from": "Zoë & Jürgen Müller-Lüdenscheidt <hello@example.org>"}))
    _encoded_lines_fit(data)
    names = [a.display_name for a in parse(data)["To"].addresses]
    assert names == ["Zoë Ünal", "Ωμέγα", "李小龍", "Plain Name"]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="aé b結", min_size=1, max_size=120),
    name_length=st.integers(1, 74),
    names=st.lists(st.text(alphabet="aé b", max_size=60), min_size=1, max_size=3),
)
def test_issue11_6_encoded_word_lines_fit_for_any_text(
    text: str, name_length: int, names: list[str]
) -> None:
    header = "X-" + "h" * name_length
    to = [{"email": f"g{i}@example.org", "name": n} for i, n in enumerate(names)]
    email_ = make(subject=text, headers={header: text}, to=to)
    data = wire(email_)
    _encoded_lines_fit(data)
    assert parse(data)[header].removeprefix(" " if _starts_folded(data, header) else "") == text
    assert parse(data)["Subject"] == text


EML = b"From: a@example.org\nTo: b@example.org\nSubject: Forwarded\n\nThe body.\n.\nFrom here\n"


@pytest.mark.parametrize("html", [None, "<p>x</p>"])
def test_issue11_6_an_eml_attachment_goes_as_message_rfc822_in_7bit(html: str | None) -> None:
    data = wire(make(html=html, attachments=[{"filename": "fwd.eml", "content": EML}]))
    part = cast(list[EmailMessage], parse(data).get_payload())[1]
    assert (part.get_content_type(), filename(part)) == ("message/rfc822", "fwd.eml")
    assert part["Content-Transfer-Encoding"] == "7bit"  # RFC 2046 5.2.1: never base64
    inner = cast(EmailMessage, part.get_content())
    assert (inner["Subject"], content(inner)) == ("Forwarded", "The body.\n.\nFrom here\n")
    old = cast(email.message.Message, compat32(data).get_payload()[1]).get_payload()[0]
    assert (old["Subject"], old.get_payload()) == ("Forwarded", "The body.\r\n.\r\nFrom here\r\n")


def test_issue11_6_a_forwarded_message_never_holds_the_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = bytes(12)
    eml = EML + f"--=_{taken.hex()}\n".encode()
    randoms = iter([taken, b"\x01" * 12])
    monkeypatch.setattr("emailq.mime.os.urandom", lambda n: next(randoms))
    data = wire(make(attachments=[{"filename": "fwd.eml", "content": eml}]))
    assert parse(data).get_boundary() == "=_" + "01" * 12
    part = cast(list[EmailMessage], parse(data).get_payload())[1]
    assert content(cast(EmailMessage, part.get_content())).endswith(f"--=_{taken.hex()}\n")


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("multipart/mixed", b"x"), ("message/rfc822", b"\xff"), ("message/rfc822", b"a\0"),
     ("message/partial", b"x")],
)  # fmt: skip
def test_issue11_6_the_renderer_refuses_composite_attachments_it_cannot_send(
    content_type: str, data: bytes
) -> None:
    with pytest.raises(ValueError, match=r"Content-Type|message/"):
        render(_attached(content_type=content_type, content=data), message_id="x", domain="e.org")
