"""Fuzzing the intake: no input gives a 5xx, and nothing accepted renders unsafe bytes.

Schemathesis fuzzes every route from the API's own OpenAPI spec. The issue-11 tests
generate ``POST /v1/emails`` and ``/v1/emails/batch`` bodies field by field, mixing valid
values with the hostile ones of the security review (controls, lone surrogates,
encoded-words, address syntax, extreme dates, deep JSON, template bombs), and run them
through the model, the policy and the renderer in process (10,000 examples when ``CI``
is set), and through the real ASGI app (fewer).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import json
import os
import random
import re
import tempfile
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from deployments import deployment_for
from emailq.api import create_app
from emailq.api.batch import parse_batch
from emailq.errors import FieldError, InvalidEmail
from emailq.ids import new_id
from emailq.intake import to_new_message
from emailq.message import Email, parse_email
from emailq.mime import envelope, render

# Schemathesis reads the schema when this module is collected, so the app is built here.
_HOME = tempfile.TemporaryDirectory(prefix="emailq-fuzz-")
atexit.register(_HOME.cleanup)
_URL = f"sqlite:///{Path(_HOME.name) / 'queue.db'}"
_DEPLOYMENT = deployment_for(_URL, api={"check_provider": False})
atexit.register(_DEPLOYMENT.close)
_, _SECRET = _DEPLOYMENT.keys.create("fuzz")
_APP = create_app(_DEPLOYMENT)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {_SECRET}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400:
        [content_type] = response.headers["content-type"]  # schemathesis lists header values
        assert content_type.startswith("application/problem+json"), response.text[:500]


# -- issue 11 (7): every field of both bodies, hostile values mixed with valid ones -------------
#
# Valid but awkward for a renderer: non-ASCII spaces, encoded-word look-alikes, quotes,
# specials, long runs, extreme offsets. Hostile: what the review found reaching headers
# (controls, lone surrogates, address syntax, dates past datetime's range, deep JSON,
# template bombs), or JSON of the wrong shape. A body is mostly valid, with at most one
# field hostile, so that most examples reach the renderer.
#
# Why plain Python generators fed by one hypothesis Random rather than a strategy per
# field: hypothesis spends about a millisecond per value on this kind of machine, and
# 10,000 bodies of a dozen fields drawn value by value took minutes. A failing example is
# replayed from hypothesis's database, and its body is in the report (note()).

_CI = bool(os.environ.get("CI"))
_FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck)}
settings.register_profile("intake-fuzz-ci", max_examples=10_000, **_FUZZ)
settings.register_profile("intake-fuzz", max_examples=500, **_FUZZ)
settings.register_profile("intake-fuzz-asgi-ci", max_examples=400, **_FUZZ)
settings.register_profile("intake-fuzz-asgi", max_examples=50, **_FUZZ)
IN_PROCESS = settings.get_profile("intake-fuzz-ci" if _CI else "intake-fuzz")
THROUGH_ASGI = settings.get_profile("intake-fuzz-asgi-ci" if _CI else "intake-fuzz-asgi")

Rng = random.Random
_AWKWARD = ["=?utf-8?b?DQo=?=", "=?", "?=", "<", ">", '"', "\\", ";", ",", ":", "@", "é", "結",
            "😀", "\u00a0", "\u3000", "\u2028", "\u200d", "\t", " ", "  ", "%0D%0A", "*", "'", "=",
            "x" * 80, "é" * 30, "Bcc: v@example.com", "a", "Zoë", "{{", "{%", "}"]  # fmt: skip
_HOSTILE = ["\r\n", "\r", "\n", "\0", "\x0b", "\x1b", "\x7f", "\x85", "\x9f", "\ud800", "\udfff"]
_BODIES = ["Hi", "x" * 74 + " \né", "line\r\nbreaks\rand\nmore", ".\n..", "é" * 2000,
           "word " * 400, "\u2028\u0085\x0c", "é" + "x" * 69 + "\t"]  # fmt: skip
_EML = base64.b64encode(b"From: a@example.org\nSubject: Fwd\n\nbody\n").decode()
_CONTENTS = ["", _EML, base64.b64encode(bytes(range(256))).decode(),
             base64.b64encode(b"x" * 2000 + b"\n").decode()]  # fmt: skip
_CONTENT_TYPES = ["application/pdf", 'text/calendar; method="REQUEST"', "message/rfc822",
                  "text/plain; charset=utf-8", 'image/png; x-note="a b;c"',
                  "message/global"]  # fmt: skip
_FILENAMES = ["menu.pdf", "fwd.eml", "a.vpm", "logo.png", "plan été.pdf", "x" * 200]
_EXTREMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2030-06-01T16:00:00",
             "1899-12-31T23:59:59Z", "2201-01-01T00:00:00Z"]  # fmt: skip
_BAD_CONTENT_TYPES = ['text/plain; x="a\0b"', 'text/plain; x="é"', "multipart/mixed",
                      'text/plain; x="=?utf-8?b?DQo=?="', "text/plain; x*=''%0D%0A",
                      "message/partial", "text/plain; name=x"]  # fmt: skip
_GOOD_TEMPLATES = [
    "Hello {{ name }}", "{{ name|title }}{% for x in items %} {{ x }}{% endfor %}",
    "{{ items|join(', ') }} {{ '%5s' % name }} {{ name ~ name }}", "Hi {", "x {#",
    "{% set b %}{{ name }}{% endset %}{{ b }}", "{{ items }}", "{{ name|center(30) }}",
]  # fmt: skip
_BAD_TEMPLATES = [
    "Hi {{ name", "{% block subject %}x{% endblock %}", "{{ 'x' * 1000001 }}",
    "{{ name * 100000000 }}", "{% for i in range(10001) %}{% endfor %}",
    "{{ items * 100000000 }}", "{{ name.ljust(2000000) }}", "{{ lipsum() }}", "{{ 9 ** 99999 }}",
    "{% for i in range(100) %}{% for j in range(101) %}{% endfor %}{% endfor %}",
]  # fmt: skip


def _awkward(rng: Rng) -> str:
    pieces = [rng.choice(_AWKWARD) if rng.random() < 0.6 else chr(rng.randrange(0x20, 0x3000))
              for _ in range(rng.randrange(6))]  # fmt: skip
    return "".join(piece for piece in pieces if unicodedata.category(piece[0]) != "Cs")


def _hostile(rng: Rng) -> str:
    return _awkward(rng) + rng.choice(_HOSTILE) + _awkward(rng)


def _address(rng: Rng) -> Any:
    local = rng.choice(["guest", "a.b+c", "x_y", "ana-ben", "o'neil", "a" * 64, "q=1", "Ana.B"])
    domain = rng.choice(["example.org", "sub.example.co.uk", "bücher.example", "a.b.c.d.example"])
    name, email = _awkward(rng), f"{local}@{domain}"
    return rng.choice([email, f"{name} <{email}>", {"email": email, "name": name}])


def _addresses(rng: Rng) -> Any:
    return (
        _address(rng) if rng.random() < 0.5 else [_address(rng) for _ in range(rng.randint(1, 3))]
    )


def _instant(rng: Rng) -> str:
    at = datetime(1900, 1, 2) + timedelta(seconds=rng.randrange(int(300 * 365.25 * 86400)))
    offset = timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1))
    return at.replace(tzinfo=timezone(offset)).isoformat()


def _junk(rng: Rng, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 5:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 6:
        return {_awkward(rng): _junk(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [None, True, rng.randrange(-(10**12), 10**12), rng.random(), _hostile(rng)][kind]


def _attachment(rng: Rng) -> dict[str, Any]:
    attachment = {"filename": rng.choice([*_FILENAMES, _awkward(rng) or "x"]),
                  "content": rng.choice(_CONTENTS)}  # fmt: skip
    if rng.random() < 0.5:
        attachment["content_type"] = rng.choice(_CONTENT_TYPES)
    if rng.random() < 0.3:
        attachment["content_id"] = rng.choice(["logo", "logo.v2@weddings.example", "a+b@c"])
    return attachment


def _wedding(rng: Rng) -> dict[str, Any]:
    wedding = {"wedding_id": _awkward(rng) or "w", "ceremony_at": _instant(rng)}
    if rng.random() < 0.5:
        wedding["timezone"] = rng.choice(["Europe/Paris", "Pacific/Kiritimati", "UTC"])
    if rng.random() < 0.7:
        wedding["kind"] = rng.choice(["ceremony_change", "vendor_update", "invitation", "other"])
    return wedding


_OPTIONAL: dict[str, Any] = {
    "cc": _addresses, "bcc": _addresses, "reply_to": _addresses,
    "html": lambda rng: rng.choice(["<p>x</p>", "<p>é\u2028</p>" * 40, _awkward(rng)]),
    "headers": lambda rng: {rng.choice(["X-Note", "List-Id", "X-" + "h" * 70]): _awkward(rng)
                            for _ in range(rng.randrange(3))},
    "attachments": lambda rng: [_attachment(rng) for _ in range(rng.randrange(3))],
    "tags": lambda rng: {rng.choice(["campaign", "k"]): _awkward(rng) for _ in range(2)},
    "idempotency_key": lambda rng: rng.choice(["key-1", "k" * 256, "a b"]),
    "send_at": _instant,
    "wedding": _wedding,
}  # fmt: skip
_HOSTILE_VALUES: list[Any] = [
    _hostile, _junk,
    lambda rng: rng.choice(_EXTREMES),
    lambda rng: {"email": "a@example.org", "name": _hostile(rng)},
    lambda rng: rng.choice(["x@example.org>\r\nBcc: v@example.com", "z..z@example.org"]),
    lambda rng: {"X-Note": _hostile(rng)},
    lambda rng: {_hostile(rng): "x"},
    lambda rng: [{"filename": "a.bin", "content": "",
                  "content_type": rng.choice(_BAD_CONTENT_TYPES)}],
    lambda rng: [{"filename": "a.bin", "content": "", "content_id": _hostile(rng)}],
    lambda rng: {"wedding_id": "w", "ceremony_at": rng.choice(_EXTREMES)},
]  # fmt: skip
FIELD_NAMES = ["from", "to", "subject", "text", *_OPTIONAL, "tenant", "priority", "x", "\ud800"]


def email_body(rng: Rng, hostile: float = 0.4) -> dict[str, Any]:
    """A body, with one field hostile at the chance of ``hostile``."""
    body = {"from": _address(rng), "to": _addresses(rng), "subject": _awkward(rng),
            "text": rng.choice([*_BODIES, _awkward(rng) or "x"])}  # fmt: skip
    for name, make in _OPTIONAL.items():
        if rng.random() < 0.3:
            body[name] = make(rng)
    if rng.random() < hostile:
        body[rng.choice(FIELD_NAMES)] = rng.choice(_HOSTILE_VALUES)(rng)
    return body


def _template_text(rng: Rng) -> str:
    draw = rng.random()  # mostly good: each of a guest list's three fields may spoil it
    if draw < 0.8:
        return rng.choice(_GOOD_TEMPLATES) if draw < 0.5 else _awkward(rng)
    return rng.choice(_BAD_TEMPLATES) if draw < 0.9 else _hostile(rng)


def _templates(rng: Rng) -> dict[str, str]:
    texts = {"subject": _template_text(rng), "text": _template_text(rng)}
    return texts | ({"html": _template_text(rng)} if rng.random() < 0.5 else {})


# Why a pool of templates: compiling one costs milliseconds, most of a guest list's time
# here; 48 fit batch.py's cache of 64, and the guests' fields, drawn afresh, vary enough.
_TEMPLATES = [_templates(Rng(seed)) for seed in range(48)]


def _variable(rng: Rng) -> Any:
    return rng.choice([_awkward(rng), [_awkward(rng) for _ in range(3)], _awkward(rng), _junk(rng)])


def batch_body(rng: Rng) -> dict[str, Any]:
    if rng.random() < 0.05:  # nested near the 32 levels a body may have
        depth = rng.randint(26, 34)
        deep = json.loads("[" * depth + "]" * depth)
        return {"template": {}, "recipients": [{"to": "a@b.org", "variables": {"x": deep}}]}
    fields = email_body(rng, hostile=0.15)
    fields = {k: v for k, v in fields.items() if k not in ("to", "idempotency_key")}
    texts = rng.choice(_TEMPLATES)
    recipients = [
        {"to": _addresses(rng), "variables": {"name": _variable(rng), "items": _variable(rng)}}
        for _ in range(rng.randint(1, 3))
    ]
    if rng.random() < 0.2:
        recipients[0]["idempotency_key"] = rng.choice(["r-1", " spaced", _hostile(rng)])
    return {"template": fields | texts, "recipients": recipients}


def a_body(rng: Rng) -> tuple[str, Any]:
    kind = rng.choice(["email", "batch"])
    body = email_body(rng) if kind == "email" else batch_body(rng)
    note(f"{kind}: {ascii(body)[:5000]}")
    return kind, body


NOW = datetime(2026, 6, 13, 12, tzinfo=UTC)
_FIELD_LINE = re.compile(rb"[!-9;-~]+:")


def assert_reportable(errors: list[FieldError]) -> None:
    """The problem document for these errors can be written (UTF-8 JSON)."""
    body = [{"field": e.field, "message": e.message} for e in errors]
    json.dumps(body, ensure_ascii=False).encode("utf-8")


def assert_renders_safely(email: Email) -> None:
    """What the worker does with an accepted email, and the bytes' invariants."""
    message = to_new_message(email, NOW)  # the policy's placement
    assert Email.from_payload(message.payload) == email
    envelope(email)
    data = render(email, message_id=new_id(), domain="mail.example.org", date=NOW)
    assert b"\0" not in data
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"), "a bare CR or LF"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "non-ASCII in the header section"
    for line in head.split(b"\r\n"):
        assert line[:1] in (b" ", b"\t") or _FIELD_LINE.match(line), line[:100]
        assert len(line) <= (76 if b"=?" in line else 998), line[:100]  # RFC 2047 2
    assert not re.search(rb"(?im)^bcc:", head)


def check_in_process(kind: str, body: Any) -> None:
    try:
        if kind == "email":
            emails = [parse_email(body)]  # the API hands the model a parsed JSON object
        else:
            emails = parse_batch(json.dumps(body).encode(), lambda template: None)
    except InvalidEmail as error:
        assert_reportable(error.errors)
        event(f"{kind}: refused")
        return
    event(f"{kind}: accepted")
    for email in emails:
        assert_renders_safely(email)


@IN_PROCESS
@given(st.randoms(use_true_random=True))
def test_issue11_7_no_body_fails_the_intake_or_renders_unsafe_bytes(rng: Rng) -> None:
    check_in_process(*a_body(rng))


_AUTH = {"Authorization": f"Bearer {_SECRET}", "Content-Type": "application/json"}
# The app does not own _DEPLOYMENT: schemathesis running its lifespan closes nothing.
_FUZZ_APP = _APP


def post(path: str, body: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=_FUZZ_APP, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://emailq") as client:
            return await client.post(path, content=json.dumps(body).encode(), headers=_AUTH)

    return asyncio.run(call())


def _scoped(body: Any) -> Any:
    """Without the fields the API key decides (tenant, priority): those answer 403."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("template"), dict):
        return body | {"template": _scoped(body["template"])}
    return {k: v for k, v in body.items() if k not in ("tenant", "priority")}


@THROUGH_ASGI
@given(st.randoms(use_true_random=True))
def test_issue11_7_no_body_makes_the_api_fail(rng: Rng) -> None:
    kind, body = a_body(rng)
    body = _scoped(body)
    path = "/v1/emails" if kind == "email" else "/v1/emails/batch"
    response = post(path, body)
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
    if response.status_code == 202:
        check_in_process(kind, body | ({"tenant": "fuzz"} if kind == "email" else {}))
