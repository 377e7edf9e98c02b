"""The email model: one validated shape for every intake, and the queue payload.

Every intake goes through :func:`parse_email`: an :class:`Email`, or an ``InvalidEmail``
naming each problem's field ("to.2.email", "attachments.0.filename"). Control characters
(CR, LF and NUL above all) and unpaired surrogates in anything bound for a header are
refused here, so the renderer never meets one (it refuses them too, as a last line). The worker
reads payloads back with :meth:`Email.from_payload`, which trusts them and skips the
costly intake checks (address syntax, size estimates).
"""

import base64
import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from emailq import mediatypes
from emailq.errors import FieldError, InvalidEmail

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # Postfix's default message_size_limit
MAX_HEADER_BYTES = 100 * 1024  # Postfix's default header_size_limit
MAX_RECIPIENTS = 100  # to + cc + bcc
MAX_ATTACHMENTS = 100
MAX_TAGS = 50
MAX_DISPLAY_NAME = 256

# Headers the model builds from its own fields (or the MTA adds): setting them by hand
# would give two conflicting copies.
RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "reply-to"}
    | {"return-path", "x-emailq-id"}
)

# Headers a caller may set besides X-*: list and thread headers, and the hints mail clients
# read. An allow list, not a deny list: a trace or authentication header (Received,
# Authentication-Results, DKIM-Signature, Sender…) would vouch for what no one checked.
ALLOWED_HEADERS = frozenset(
    {"list-id", "list-unsubscribe", "list-unsubscribe-post", "list-help", "list-subscribe",
     "list-post", "list-owner", "list-archive", "in-reply-to", "references", "precedence",
     "auto-submitted", "importance", "priority", "sensitivity", "keywords", "comments",
     "feedback-id", "organization", "thread-topic", "thread-index"}
)  # fmt: skip

_TRUSTED = {"trusted": True}
# Header-bound text: no C0 control but HTAB, no DEL, no C1 control (RFC 5322 unstructured
# text is VCHAR and WSP), and no unpaired surrogate, which JSON's "\ud800" can carry but
# no UTF-8 encoder can write.
_UNSAFE_HEADER_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")  # RFC 5322 ftext: printable but ":"
_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_TAG_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")
_DOT_ATOM_TEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOT_ATOM = re.compile(_DOT_ATOM_TEXT)
# RFC 2392 takes a Content-ID's grammar from RFC 5322's msg-id: dot-atoms around an "@".
# Without "@" is allowed too, as mail clients resolve "cid:logo" all the same.
_CONTENT_ID = re.compile(rf"{_DOT_ATOM_TEXT}(?:@{_DOT_ATOM_TEXT})?")
_WSP_RUN = re.compile(r"[ \t]{2,}|\t")  # RFC 5322 WSP that is not already a single space
_NAME_ADDR = re.compile(r"(?P<name>.*)<(?P<email>[^<>]*)>", re.DOTALL)


def _invalid(message: str, path: str = "") -> PydanticCustomError:
    """A validation error; ``path`` extends the field's location (e.g. a header's name)."""
    return PydanticCustomError("emailq", message, {"path": _encodable(path)} if path else None)


def _trusted(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("trusted"))


def _header_safe(value: str, path: str = "") -> str:
    # Why: a CR or LF here would let a caller start a header of their own choosing, and a
    # surrogate would fail only when the worker encodes it, as mail that can never be sent.
    if _UNSAFE_HEADER_TEXT.search(value):
        message = "must not contain control characters (CR, LF, NUL...) or unpaired surrogates"
        raise _invalid(message, path)
    return value


HeaderText = Annotated[str, AfterValidator(lambda value: _header_safe(value))]


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError's text (in a traceback, a log line, the
    # worker's bury reason) would otherwise repeat the input, addresses included.
    # cache_strings="keys": the JSON parser keeps the field names it meets, not every short
    # value (addresses, subjects: rarely repeated). Its cache of 16,384 values, renewed as
    # mail goes by, kept small long-lived strings among each batch's short-lived objects,
    # and the worker's memory grew by their scattered arenas.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, hide_input_in_errors=True,
        cache_strings="keys",
    )  # fmt: skip


class MessageKind(StrEnum):
    CEREMONY_CHANGE = "ceremony_change"
    WEATHER_ALERT = "weather_alert"
    VENUE_CHANGE = "venue_change"
    EMERGENCY = "emergency"
    VENDOR_SCHEDULE_CHANGE = "vendor_schedule_change"
    WEDDING_DAY_UPDATE = "wedding_day_update"
    VENDOR_UPDATE = "vendor_update"
    RSVP_REMINDER = "rsvp_reminder"
    SEATING_UPDATE = "seating_update"
    PAYMENT_REMINDER = "payment_reminder"
    INVITATION = "invitation"
    SAVE_THE_DATE = "save_the_date"
    THANK_YOU = "thank_you"
    PHOTO_GALLERY = "photo_gallery"
    NEWSLETTER = "newsletter"
    OTHER = "other"


def _fixed_offset(value: datetime) -> datetime:
    # Why: a ZoneInfo would not survive the JSON payload; its offset at that instant does.
    # JSON offsets are whole minutes, so an old local-mean-time offset becomes UTC.
    offset = value.utcoffset()
    assert offset is not None  # AwareDatetime guarantees it
    if offset % timedelta(minutes=1):
        return value.astimezone(UTC)
    return value.replace(tzinfo=UTC if not offset else timezone(offset))


# Far enough apart for any wedding or schedule, and far from datetime's own limits (years 1
# and 9999), where a change of offset (astimezone, the policy's arithmetic) overflows.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2201, 1, 1, tzinfo=UTC)  # exclusive: the last instant of 2200 is the last


def _instant(value: datetime) -> datetime:
    # Most years are far from both ends whatever the offset; comparing aware datetimes,
    # for the others, converts neither, so cannot overflow itself.
    if not EARLIEST.year < value.year < LATEST.year - 1 and not EARLIEST <= value < LATEST:
        raise _invalid("must be between 1900-01-01 and 2200-12-31 (UTC)")
    return _fixed_offset(value)


Instant = Annotated[AwareDatetime, AfterValidator(_instant)]


class Address(_Model):
    """A mailbox; also accepts the string forms ``"a@b.c"`` and ``"Name <a@b.c>"``."""

    email: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        _header_safe(value)  # before any stripping could hide one
        # Only SP and HTAB are whitespace in a header (RFC 5322 WSP): a name's other
        # spaces (U+00A0, U+3000...) are its own characters.
        match = _NAME_ADDR.fullmatch(value.strip(" \t"))
        if not match:
            return {"email": value.strip()}
        name = match["name"].strip(" \t")
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        return {"email": match["email"].strip(), "name": name or None}

    @field_validator("email")
    @classmethod
    def _valid_address(cls, value: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return value
        _header_safe(value)
        if len(value) > 320:
            raise _invalid("is too long to be an email address")
        normalized, problem = _checked_address(value)
        if problem:
            raise _invalid(problem)
        return normalized

    @field_validator("name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Why: in a display name a run of whitespace means one space (RFC 5322 3.2.2), and
        # parsers do collapse it, so store what every reader will see. Whitespace is SP and
        # HTAB only: U+00A0 or U+3000 stay as they are (the renderer encodes them).
        value = _WSP_RUN.sub(" ", _header_safe(value)).strip(" ")
        if len(value) > MAX_DISPLAY_NAME:
            raise _invalid(f"must be at most {MAX_DISPLAY_NAME} characters")
        return value or None


def _checked_address(value: str) -> tuple[str, str]:
    """``(normalized, "")`` or ``("", why not)``, as email-validator decides.

    The check is most of an email's intake cost, so the common shape (an ASCII dot-atom
    before the @, which email-validator accepts as it is) only has its domain checked,
    once per domain; anything else gets the full check. ``tests/test_message.py`` holds
    the two paths to the same answers.
    """
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and len(value) <= 254 and _DOT_ATOM.fullmatch(local):
        normalized_domain = _checked_domain(domain)
        if normalized_domain:
            return f"{local}@{normalized_domain}", ""
    return _full_check(value)


@functools.lru_cache(maxsize=16384)
def _checked_domain(domain: str) -> str:
    """The domain as email-validator normalizes it, or "" when it is refused."""
    normalized, problem = _full_check(f"a@{domain}")
    return "" if problem else normalized.rpartition("@")[2]


@functools.lru_cache(maxsize=65536)
def _full_check(value: str) -> tuple[str, str]:
    # Imported here: a worker reads trusted payloads and never checks (its start is faster).
    from email_validator import EmailNotValidError, validate_email

    try:
        # No DNS at intake; SMTPUTF8 (non-ASCII before the @) is not supported.
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        return "", str(error)
    return checked.normalized, ""


def _as_list(value: Any) -> Any:
    """One address may be given alone instead of in a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str | dict | Address) else value


Addresses = Annotated[list[Address], BeforeValidator(_as_list)]


def _decode_content(value: Any) -> Any:
    # Why: JSON has no bytes, so a string is always base64; Python callers pass raw bytes.
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise _invalid("must be base64 (standard alphabet, padded, no line breaks)") from None
    return value


Content = Annotated[
    bytes,
    BeforeValidator(_decode_content),
    PlainSerializer(lambda raw: base64.b64encode(raw).decode(), return_type=str, when_used="json"),
]


def _seven_bit(content: Any) -> bool:
    """Whether ``content`` (bytes, or base64 text) is a message/* body that can go as 7bit."""
    try:
        raw = _decode_content(content)
    except PydanticCustomError:
        return False  # the content's own check reports it
    return isinstance(raw, bytes) and mediatypes.seven_bit_lines(raw) is not None


# Why: RFC 2047 forbids encoded-words here, yet mail parsers decode them, into any bytes,
# CR and LF included.
_NO_ENCODED_WORDS = "must not hold an encoded-word (=?...?=)"


def _filename(value: str) -> str:
    value = _header_safe(value).strip()  # mail clients strip it anyway
    if not value or len(value) > 255:
        raise _invalid("must be 1-255 characters, not blank")
    return value


class Attachment(_Model):
    filename: Annotated[str, AfterValidator(_filename)]
    content: Content
    content_type: str = ""  # guessed from the filename when not given (never stays empty)
    content_id: str | None = None  # set for an inline part the HTML refers to as cid:...

    @model_validator(mode="before")
    @classmethod
    def _guess_content_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value.get("content_type"):
            filename = value.get("filename")
            guessed = mediatypes.guess(filename) if isinstance(filename, str) else ""
            if mediatypes.is_message(guessed) and not _seven_bit(value.get("content")):
                guessed = ""  # a .eml that cannot go as 7bit still goes, as a file
            return {**value, "content_type": guessed or mediatypes.OCTET_STREAM}
        return value

    @field_validator("content_type")
    @classmethod
    def _valid_content_type(cls, value: str) -> str:
        value = value.strip()
        if len(value) > 255 or not mediatypes.CONTENT_TYPE.fullmatch(value):
            raise _invalid(
                'must be a MIME type such as "application/pdf"; parameter values are tokens'
                " or quoted printable ASCII (RFC 2045)"
            )
        if "=?" in value:
            raise _invalid(_NO_ENCODED_WORDS)
        if re.search(r";\s*(name|boundary)\s*=", value, re.IGNORECASE):
            raise _invalid("must not set name or boundary (they come from the attachment)")
        if problem := mediatypes.composite_problem(value):
            raise _invalid(problem)
        return value

    @model_validator(mode="after")
    def _message_is_seven_bit(self) -> Self:
        # Why: a message/* part may not be base64 (RFC 2046 5.2.1); see mediatypes.
        if mediatypes.is_message(self.content_type) and not _seven_bit(self.content):
            message = (
                "message/* content must be ASCII without NUL, in lines of at most 998"
                " characters, to be sent as 7bit (send other files as"
                " application/octet-stream)"
            )
            raise _invalid(message, "content_type")
        return self

    @field_validator("content_id")
    @classmethod
    def _valid_content_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.removeprefix("<").removesuffix(">")
        if len(value) > 250 or not _CONTENT_ID.fullmatch(value):
            raise _invalid(
                "must be an id such as logo@example.org: at most 250 characters, dot-atoms"
                " (RFC 5322) around an optional @"
            )
        if "=?" in value:
            raise _invalid(_NO_ENCODED_WORDS)
        return value


class WeddingContext(_Model):
    wedding_id: Annotated[HeaderText, Field(min_length=1, max_length=128)]
    ceremony_at: Instant
    timezone: str | None = None  # IANA name; when absent, ceremony_at's offset is the zone
    kind: MessageKind = MessageKind.OTHER

    @model_validator(mode="before")
    @classmethod
    def _zone_from_ceremony(cls, value: Any) -> Any:
        # Why: a ceremony_at given with a ZoneInfo names its zone; keep the name.
        if isinstance(value, dict) and not value.get("timezone"):
            at = value.get("ceremony_at")
            if isinstance(at, datetime) and isinstance(at.tzinfo, ZoneInfo):
                return {**value, "timezone": at.tzinfo.key}
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        try:
            return value if value is None else ZoneInfo(value).key
        except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
            raise _invalid("is not a known IANA time zone (e.g. Europe/Paris)") from None

    @property
    def zone(self) -> tzinfo:
        """The wedding's time zone: the named one, else ceremony_at's offset."""
        if self.timezone:
            return ZoneInfo(self.timezone)
        offset = self.ceremony_at.utcoffset() or timedelta(0)
        return timezone(offset)

    @property
    def local_ceremony_at(self) -> datetime:
        return self.ceremony_at.astimezone(self.zone)


def _body(value: str | None) -> str | None:
    if value is None:
        return None
    if "\0" in value or (not value.isascii() and _UNPAIRED_SURROGATE.search(value)):
        raise _invalid("must not contain NUL or unpaired surrogates")
    return value if value.strip() else None  # a blank body is no body


Body = Annotated[str | None, AfterValidator(_body)]


def _matching(pattern: re.Pattern[str], message: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise _invalid(message)
        return value

    return AfterValidator(check)


Tenant = Annotated[str, _matching(_TENANT, "must be 1-128 letters, digits, '_', '.' or '-'")]
IdempotencyKey = Annotated[
    str, _matching(_IDEMPOTENCY_KEY, "must be 1-256 printable ASCII, no space at either end")
]
Recipients = Annotated[Addresses, Field(min_length=1, max_length=MAX_RECIPIENTS)]
Subject = Annotated[HeaderText, Field(max_length=998)]


class Email(_Model):
    sender: Address = Field(alias="from")
    to: Recipients
    # default_factory: pydantic deep-copies a mutable default for every instance, which
    # cost about 5 µs per email at intake.
    cc: Annotated[Addresses, Field(max_length=MAX_RECIPIENTS, default_factory=list)]
    bcc: Annotated[Addresses, Field(max_length=MAX_RECIPIENTS, default_factory=list)]
    reply_to: Annotated[Addresses, Field(max_length=10, default_factory=list)]
    subject: Subject
    text: Body = None
    html: Body = None
    headers: dict[str, str] = Field(default_factory=dict)
    attachments: Annotated[
        list[Attachment], Field(max_length=MAX_ATTACHMENTS, default_factory=list)
    ]
    tags: dict[str, str] = Field(default_factory=dict)
    tenant: Tenant = "default"
    idempotency_key: IdempotencyKey | None = None
    send_at: Instant | None = None
    # Retried until then, like an MTA's queue lifetime (default: the lane's maximum age);
    # max_attempts also limits the count (default: none, only the age).
    expires_at: Instant | None = None
    max_attempts: Annotated[int | None, Field(ge=1, le=1000)] = None
    wedding: WeddingContext | None = None
    priority: Annotated[int | None, Field(ge=0, le=100)] = None  # trusted callers only

    @field_validator("expires_at")
    @classmethod
    def _expires_after_send_at(cls, value: datetime | None, info: ValidationInfo) -> Any:
        send_at = info.data.get("send_at")
        if value is not None and send_at is not None and value <= send_at:
            raise _invalid("must be after send_at")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            lowered = name.lower()
            if not _FIELD_NAME.fullmatch(name):
                raise _invalid("names are 1-76 printable ASCII characters without ':'", name)
            if lowered in RESERVED_HEADERS or lowered.startswith("content-"):
                raise _invalid("is set from the email's own fields, not by hand", name)
            if lowered not in ALLOWED_HEADERS and not lowered.startswith("x-"):
                raise _invalid("only X-* and list, thread and client-hint headers may be set", name)
            if lowered in seen:
                raise _invalid("header given twice (names are case-insensitive)", name)
            seen.add(lowered)
            _header_safe(text, name)
        return value

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise _invalid(f"at most {MAX_TAGS} tags")
        for name, text in value.items():
            if not _TAG_NAME.fullmatch(name):
                raise _invalid("tag names are 1-64 letters, digits, '_', '.' or '-'", name)
            if len(text) > 256:
                raise _invalid("tag values are at most 256 characters", name)
            _header_safe(text, name)
        return value

    @field_validator("attachments")
    @classmethod
    def _unique_content_ids(cls, value: list[Attachment]) -> list[Attachment]:
        ids = [a.content_id for a in value if a.content_id]
        if len(ids) != len(set(ids)):
            raise _invalid("two inline attachments share a content_id")
        return value

    @model_validator(mode="after")
    def _whole_message(self, info: ValidationInfo) -> Self:
        # A payload read back from the queue (trusted) had its sizes checked at intake.
        limit = (info.context or {}).get("max_message_bytes", MAX_MESSAGE_BYTES)
        _check_whole(self, None if _trusted(info) else limit)
        return self

    def recipients(self) -> list[str]:
        """Envelope recipients: to, cc and bcc, each address once, in that order."""
        return list(dict.fromkeys(a.email for a in (*self.to, *self.cc, *self.bcc)))

    def to_payload(self) -> bytes:
        """Compact JSON for the queue; :meth:`from_payload` reads it back exactly."""
        return self.model_dump_json(by_alias=True, exclude_defaults=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes | str) -> "Email":
        """Read back a payload written by :meth:`to_payload` (trusted: skips intake checks)."""
        return cls.model_validate_json(payload, context=_TRUSTED)


def _check_whole(email: Email, size_limit: int | None) -> None:
    """The checks that need every field; sizes only when ``size_limit`` is given."""
    if email.text is None and email.html is None:
        raise _invalid("text or html is required (and must not be blank)", "text")
    counts = {"to": len(email.to), "cc": len(email.cc), "bcc": len(email.bcc)}
    if sum(counts.values()) > MAX_RECIPIENTS:
        last = [name for name, count in counts.items() if count][-1]
        message = f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together"
        raise _invalid(message, last)
    if size_limit is not None:
        _check_sizes(email, size_limit)


def _text_size(text: str) -> int:
    # Why an estimate: ASCII goes out about as is; anything else at worst as base64.
    return len(text) if text.isascii() else len(text.encode()) * 4 // 3 + 2


def _header_sizes(email: Email) -> dict[str, int]:
    fields = {"from": [email.sender], "to": email.to, "cc": email.cc, "reply_to": email.reply_to}
    sizes = {
        field: sum(len(a.email) + _text_size(a.name or "") + 8 for a in addresses)
        for field, addresses in fields.items()
    }
    sizes["subject"] = _text_size(email.subject) + 12
    sizes["headers"] = sum(len(n) + _text_size(v) + 4 for n, v in email.headers.items())
    return sizes


def _check_sizes(email: Email, limit: int) -> None:
    """Postfix-like limits; an error names the field that contributes the most."""
    headers = _header_sizes(email)
    header_total = sum(headers.values()) + 400  # Date, Message-ID, MIME headers...
    if header_total > MAX_HEADER_BYTES:
        largest = max(headers, key=headers.__getitem__)
        message = f"headers would be about {header_total} bytes, over {MAX_HEADER_BYTES}"
        raise _invalid(message, largest)
    parts = {
        "text": _text_size(email.text or ""),
        "html": _text_size(email.html or ""),
        # base64: 4/3 the size, CRLF every 76 characters; and the part's own headers
        "attachments": sum(
            (len(a.content) + 2) // 3 * 4 * 78 // 76 + 300 for a in email.attachments
        ),
    }
    total = header_total + sum(parts.values())
    if total > limit:
        largest = max(parts, key=parts.__getitem__)
        raise _invalid(f"message would be about {total} bytes, over the limit of {limit}", largest)


def parse_email(
    data: Mapping[str, Any] | bytes | str, *, max_message_bytes: int | None = None
) -> Email:
    """Validate an email from JSON text or a parsed mapping; raise InvalidEmail if it is not one.

    ``max_message_bytes`` overrides :data:`MAX_MESSAGE_BYTES` (read at call time).
    """
    context = {"max_message_bytes": _size_limit(max_message_bytes)}
    try:
        if isinstance(data, bytes | bytearray | str):
            return Email.model_validate_json(data, context=context)
        if isinstance(data, Mapping):
            return Email.model_validate(dict(data), context=context)
    except PydanticValidationError as error:
        raise _invalid_email(error) from None
    raise InvalidEmail([FieldError("", f"expected a JSON object, not {type(data).__name__}")])


# Guest lists: many emails that differ only in these fields. Validating the rest once and
# each guest's own fields on their own is what lets a 1,000-guest list be accepted in
# milliseconds; tests/test_message.py holds the result to parse_email's, field by field.
class _Personal(_Model):
    """A guest's own fields, with the same types (and checks) as in :class:`Email`."""

    to: Recipients
    subject: Subject
    text: Body = None
    html: Body = None
    idempotency_key: IdempotencyKey | None = None


PERSONAL_FIELDS = tuple(_Personal.model_fields)
# No larger than any guest's own fields can be, so the shared part's size check never
# refuses what the whole email would pass (a guest's text or html has at least 1 character).
_PLACEHOLDERS = {"to": [Address.model_construct(email="")], "subject": "", "text": "-",
                 "html": None, "idempotency_key": None}  # fmt: skip


def parse_shared(data: Mapping[str, Any], *, max_message_bytes: int | None = None) -> Email:
    """What every email of a guest list shares: ``data`` validated as an Email, except that
    :data:`PERSONAL_FIELDS` hold placeholders until :func:`personalised` fills them.

    Errors name ``data``'s fields. Subject and bodies are checked per guest, rendered.
    """
    shared = {name: value for name, value in data.items() if name not in PERSONAL_FIELDS}
    return parse_email(shared | _PLACEHOLDERS, max_message_bytes=max_message_bytes)


def personalised(
    shared: Email, personal: Mapping[str, Any], *, max_message_bytes: int | None = None
) -> Email:
    """``shared`` with one guest's fields, checked as :func:`parse_email` would check the
    whole email; an InvalidEmail names the guest's fields."""
    try:
        own = _Personal.model_validate(personal)
        email = shared.model_copy(update={name: getattr(own, name) for name in PERSONAL_FIELDS})
        _check_whole(email, _size_limit(max_message_bytes))
    except PydanticValidationError as error:
        raise _invalid_email(error) from None
    except PydanticCustomError as error:
        path = (error.context or {}).get("path", "")
        raise InvalidEmail([FieldError(path, error.message())]) from None
    return email


def _size_limit(max_message_bytes: int | None) -> int:
    return MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes


def _invalid_email(error: PydanticValidationError) -> InvalidEmail:
    # Raised "from None" by callers: the pydantic error repeats the input (addresses) into
    # tracebacks and logs.
    return InvalidEmail([_field_error(e) for e in error.errors(include_input=False)])


_FRIENDLY = {"extra_forbidden": "unknown field", "missing": "required"}


def _field_error(error: ErrorDetails) -> FieldError:
    loc = [str(part) for part in error["loc"]]
    if loc[:1] == ["sender"]:
        loc[0] = "from"  # the name callers use
    ctx = error.get("ctx") or {}
    if ctx.get("path"):
        loc.append(str(ctx["path"]))
    message = _FRIENDLY.get(error["type"], error["msg"])
    return FieldError(_encodable(".".join(loc)), _encodable(message))


def _encodable(text: str) -> str:
    """``text`` with unpaired surrogates written as ``\\udxxx``: a field name given as a
    key ("tags.\\ud800") must not make the error report itself unencodable."""
    if text.isascii() or not _UNPAIRED_SURROGATE.search(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
