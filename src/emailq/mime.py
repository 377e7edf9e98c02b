"""An Email → RFC 5322 / MIME bytes, on a fast path.

The standard library's ``EmailMessage`` + ``set_content`` costs 1-3 ms a message, several
times the cost of sending it (DESIGN.md §4). This module writes the bytes directly with
string building and the C helpers in ``binascii``: about 25 µs for a 1.5 KB text + HTML
message (``benchmarks/render.py``).

What the output guarantees:

- CRLF line endings, no bare CR or LF, no line over 998 bytes; header lines are folded at
  78 characters wherever there is a place to fold, and a line that holds an encoded-word
  is at most 76 (RFC 2047 2). Headers are pure ASCII: non-ASCII text
  goes in RFC 2047 encoded-words, non-ASCII filenames in RFC 2231 parameters, IDN domains
  as punycode. Bodies are 7bit when they can be, else quoted-printable or base64 (whichever
  is smaller), so no 8BITMIME or SMTPUTF8 support is needed anywhere on the way.
- Text bodies are sent with CRLF line breaks (any of CRLF, CR, LF in the input is one line
  break), so a parser gives back the input with its line breaks normalised.
- A line of the body that starts with "." is left alone: dot-stuffing is the SMTP client's
  job (aiosmtplib does it), and a file or HTTP provider must not see it.
- A single-part message ends with a line break only if its text does, so the body is
  exactly the input; SMTP clients add the final CRLF before the ending ".".
- Bcc never appears; the envelope (:func:`envelope`) carries it.
- Whatever path a payload took (the worker reads them back as trusted), no header is
  written with NUL, a control, a non-ASCII character or a line break that is not one of
  its own folds, and no address that is not a plain addr-spec: :func:`render` and
  :func:`envelope` raise ValueError naming the header instead. The model refuses all of
  these at intake; this is the last line of defence.

Known limit of one parser: Python 3.11's structured-header parser (gh-128110) inserts a
space between adjacent encoded-words in a display name, so a non-ASCII display name of
more than 45 UTF-8 bytes, which RFC 2047 makes us split into several words, reads back
with extra spaces there in ``email.message_from_bytes``. Mail clients read it correctly.
Likewise, a custom header whose name leaves an encoded-word too little room beside it
(from 55 characters) may start its value on a folded line, and that parser keeps the
fold's space at the start of the value.
"""

import base64
import binascii
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from urllib.parse import quote

from emailq import mediatypes
from emailq.clock import now
from emailq.message import Address, Attachment, Email

MAX_LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters...
HARD_LINE = 998  # ...and MUST be at most 998
ENCODED_LINE = 76  # RFC 2047 2: a line that holds an encoded-word, at most 76
_WORD_BYTES = 45  # UTF-8 bytes in one 75-character base64 encoded-word

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_RAW_TEXT = re.compile(r"[\x21-\x7e]+(?: +[\x21-\x7e]+)*")  # no edge or control whitespace
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_NOT_7BIT = re.compile(r"[^\t\n\x20-\x7e]")
_ID_PART = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")  # a dot-atom (RFC 5322)
_DOMAIN = re.compile(r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# local@domain, in the forms the model accepts: a dot-atom before the @ (no quoted local
# part, so no "<", ">", ",", space...) and an ASCII domain (punycode on the wire).
_ADDR_SPEC = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_DOMAIN.pattern}")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")  # RFC 5322 ftext: printable but ":"
_VERBATIM = re.compile(r"[\x20-\x7e]*")  # what a value written as it is may hold
_HEADER_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t"
_BREAKERS = re.compile("[\r\n\0]")
_PARAM_SAFE = "!#$&+-.^_`|~"  # RFC 2231 attribute-char besides letters and digits


def render(email: Email, *, message_id: str, domain: str, date: datetime | None = None) -> bytes:
    """The message as it goes on the wire: headers, a blank line, the MIME body."""
    # Message-ID: <id-left@id-right>, each a dot-atom (RFC 5322 3.6.4)
    if len(message_id) > 128 or not _ID_PART.fullmatch(message_id):
        raise ValueError("message_id must be a dot-atom of letters, digits, '_', '+' or '-'")
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise ValueError("domain must be a host name (dot-separated letters, digits, '-')")
    if date is None:
        date = datetime.fromtimestamp(now(), UTC)
    elif date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    body = _body(email)
    lines = [
        _address_header("From", [email.sender]),
        _address_header("To", email.to),
        *([_address_header("Cc", email.cc)] if email.cc else ()),
        *([_address_header("Reply-To", email.reply_to)] if email.reply_to else ()),
        _text_header("Subject", email.subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: <{message_id}@{domain}>",
        "MIME-Version: 1.0",
        *(_custom_header(name, value) for name, value in email.headers.items()),
        f"X-Emailq-Id: {message_id}",
        *body.headers,
    ]
    return b"".join([_head(lines), *body.chunks])


def envelope(email: Email) -> tuple[str, list[str]]:
    """(MAIL FROM, RCPT TO): the sender, and to + cc + bcc once each, all in ASCII form."""
    return (
        _ascii_address(email.sender.email, "MAIL FROM"),
        [_ascii_address(r, "RCPT TO") for r in email.recipients()],
    )


def _ascii_address(address: str, where: str) -> str:
    """The address as it goes on the wire, or ValueError naming ``where`` it was going.

    Why check again: a payload read back as trusted skips the model's address checks, and
    "x@y>\\r\\nBcc: ..." must not become a header, nor a second SMTP command.
    """
    try:
        wire = address if address.isascii() else _punycode(address)
    except ValueError:  # email-validator's refusal, or SMTPUTF8
        wire = ""
    if len(wire) > 320 or not _ADDR_SPEC.fullmatch(wire):
        raise ValueError(f"{where}: an address is not a plain local@domain")
    return wire


@lru_cache(maxsize=1024)
def _punycode(address: str) -> str:
    # Why: the model keeps an IDN domain in Unicode (normalised); the wire needs punycode.
    from email_validator import validate_email  # here: most mail never needs it

    ascii_email = validate_email(address, check_deliverability=False).ascii_email
    if ascii_email is None:
        raise ValueError("address needs SMTPUTF8, which emailq does not use")
    return ascii_email


# Headers


def _head(lines: list[str]) -> bytes:
    """Header lines as bytes, the blank line after them included; ValueError naming the
    header if any holds a control, a non-ASCII character, or a line break but a fold.

    Why: the last line of defence against a header of a payload's choosing. Deleting the
    folds and every printable character must leave exactly the CRLFs that end the lines
    (two C calls, about 1 µs a message).
    """
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(_unsafe_header(lines)) from None
    line_ends = b"\r\n" * (len(lines) + 1)  # and the blank line's
    if head.replace(b"\r\n ", b"").translate(None, _HEADER_TEXT_BYTES) != line_ends:
        raise ValueError(_unsafe_header(lines))
    return head


def _unsafe_header(lines: list[str]) -> str:
    """Which header :func:`_head` refuses, named without its value (it may be personal)."""
    for line in lines:
        data = line.encode("ascii", "replace").replace(b"\r\n ", b"")
        if not line.isascii() or data.translate(None, _HEADER_TEXT_BYTES):
            name = line.partition(":")[0]
            label = f"the {name} header" if _FIELD_NAME.fullmatch(name) else "a header"
            return f"{label} would hold a control, a non-ASCII character or a line break"
    return "a header would hold a control, a non-ASCII character or a line break"


def _fold(name: str, tokens: list[str], limit: int = MAX_LINE) -> str:
    """``Name: tokens`` joined by spaces, breaking lines before a token that would pass
    ``limit``.

    Unfolding (removing the CRLFs) gives back exactly the tokens joined by single spaces.
    At the encoded-word limit even the first token goes on a line of its own when the
    name leaves it no room: that limit is a MUST.
    """
    lines: list[str] = []
    line = name + ":"
    strict = limit == ENCODED_LINE
    for token in tokens:
        # Why "token and": a folded line must not be whitespace only (RFC 5322 3.2.2).
        too_long = len(line) + 1 + len(token) > limit
        if token and too_long and (strict or len(line) > len(name) + 1):
            lines.append(line)
            line = " " + token
        else:
            line += " " + token
    lines.append(line)
    return "\r\n".join(lines)


def _custom_header(name: str, value: str) -> str:
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError("a custom header's name is not 1-76 printable ASCII characters but ':'")
    return _text_header(name, value)


def _text_header(name: str, value: str) -> str:
    """An unstructured header (Subject, custom headers): as is if safe, else encoded-words."""
    if _RAW_TEXT.fullmatch(value) and "=?" not in value:
        words = value.split(" ")
        if len(name) + len(value) + 2 <= MAX_LINE or max(map(len, words)) < HARD_LINE - 100:
            return _fold(name, words)
    if not value:
        return name + ":"
    words = _encoded_words(value, ENCODED_LINE - len(name) - 2, name)
    return _fold(name, words, ENCODED_LINE)


def _encoded_words(text: str, first_room: int, header: str) -> list[str]:
    """RFC 2047 base64 encoded-words of at most 75 characters, whole characters each.

    Whitespace between encoded-words is not part of the text, so a split can go anywhere.
    """
    data = _utf8(text, header)
    size = min(_WORD_BYTES, (first_room - 12) // 4 * 3)
    if size < 6:  # a long header name: _fold puts the first word on the next line
        size = _WORD_BYTES
    words, start = [], 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:end]).decode("ascii") + "?=")
        start, size = end, _WORD_BYTES
    return words


def _address_header(name: str, addresses: list[Address]) -> str:
    tokens: list[str] = []
    encoded = False
    for index, address in enumerate(addresses):
        room = ENCODED_LINE - len(name) - 2 if index == 0 else ENCODED_LINE - 1
        mailbox = _mailbox(address, room, name)
        encoded = encoded or mailbox[0].startswith("=?")
        if index < len(addresses) - 1:
            mailbox[-1] += ","
        tokens += mailbox
    return _fold(name, tokens, ENCODED_LINE if encoded else MAX_LINE)


def _mailbox(address: Address, room: int, header: str) -> list[str]:
    addr = _ascii_address(address.email, header)
    display = address.name
    if not display:
        return [addr]
    if _ATOMS.fullmatch(display) and "=?" not in display:
        words = display.split(" ")
    elif _PRINTABLE.fullmatch(display) and "=?" not in display:
        words = ['"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"']
    else:
        words = _encoded_words(display, room, header)
    return [*words, f"<{addr}>"]


def _utf8(text: str, header: str) -> bytes:
    """Text to be encoded for a header (RFC 2047 or 2231), as UTF-8.

    Why refuse CR, LF and NUL although they would go out encoded: parsers decode them
    back, and whatever writes the decoded value out again would write the line break.
    """
    if _BREAKERS.search(text):
        raise ValueError(f"the {header} header would hold CR, LF or NUL")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate, in a payload read back as trusted
        raise ValueError(f"the {header} header would hold an unpaired surrogate") from None


def _param(key: str, value: str) -> list[str]:
    """``key=value`` for a MIME parameter: quoted if short ASCII, else RFC 2231 encoded."""
    room = MAX_LINE - len(key) - 15  # a folded line holds ' key*NN*=utf-8''' + it + ';'
    if _PRINTABLE.fullmatch(value) and "=?" not in value:  # parsers decode "=?" words here
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= room:
            return [f"{key}={quoted}"]
    # Why segments of whole characters: parsers decode each segment on its own.
    segments, current = [], ""
    for char in value:
        encoded = quote(char, safe=_PARAM_SAFE)
        if len(current) + len(encoded) > room:
            segments.append(current)
            current = ""
        current += encoded
    segments.append(current)
    if len(segments) == 1:
        return [f"{key}*=utf-8''{current}"]
    first = [f"{key}*0*=utf-8''{segments[0]}"]
    return first + [f"{key}*{i}*={s}" for i, s in enumerate(segments[1:], start=1)]


def _with_params(name: str, value: str, params: list[str]) -> str:
    return _fold(name, [value + ";", *(p + ";" for p in params[:-1]), *params[-1:]])


# Bodies


@dataclass(slots=True)
class _Entity:
    """A MIME entity: its Content-* header lines and its body, in pieces to avoid copies."""

    headers: list[str]
    chunks: list[bytes]


def _body(email: Email) -> _Entity:
    """text/plain, text/html, or the multipart tree they and the attachments need.

    mixed(alternative(text, related(html, inline parts...)), attachments...), leaving out
    every level that would have only one part.
    """
    html = email.html
    inline = [a for a in email.attachments if a.content_id and html is not None]
    attached = [a for a in email.attachments if not (a.content_id and html is not None)]
    # Why: a boundary must not occur in any part. Encoded parts cannot contain "=_" (QP
    # writes "=" as "=3D", base64 has no "_"), so only raw text can hold one by chance.
    sources = [email.text or "", html or ""]
    for a in email.attachments:
        sources.append(a.filename + a.content_type + (a.content_id or ""))
        if mediatypes.is_message(a.content_type):  # sent as 7bit text, as it is
            sources.append(a.content.decode("ascii", "replace"))
    alternatives = []
    if email.text is not None:
        alternatives.append(_text_part(email.text, "plain"))
    if html is not None:
        part = _text_part(html, "html")
        if inline:
            parts = [part, *(_attachment_part(a, "inline") for a in inline)]
            part = _multipart("related", parts, sources, ['type="text/html"'])
        alternatives.append(part)
    if len(alternatives) == 1:
        main = alternatives[0]
    else:
        main = _multipart("alternative", alternatives, sources)
    if not attached:
        return main
    parts = [main, *(_attachment_part(a, "attachment") for a in attached)]
    return _multipart("mixed", parts, sources)


def _text_part(text: str, subtype: str) -> _Entity:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    headers = [f'Content-Type: text/{subtype}; charset="utf-8"']
    if _NOT_7BIT.search(text) is None and _lines_fit(text):
        headers.append("Content-Transfer-Encoding: 7bit")
        return _Entity(headers, [text.replace("\n", "\r\n").encode("ascii")])
    data = text.encode("utf-8")
    quoted = _quoted_printable(data)
    if len(quoted) <= _base64_length(len(data)):
        headers.append("Content-Transfer-Encoding: quoted-printable")
        return _Entity(headers, [quoted.replace(b"\n", b"\r\n")])
    headers.append("Content-Transfer-Encoding: base64")
    return _Entity(headers, [_base64_lines(text.replace("\n", "\r\n").encode("utf-8"))])


def _quoted_printable(data: bytes) -> bytes:
    """Quoted-printable lines of at most 76 characters (RFC 2045 6.7, rule 5).

    b2a_qp (istext) encodes trailing whitespace, a lone ".", "=", controls, non-ASCII and
    breaks lines at 76 with soft breaks; its line breaks are the input's "\n". But a line
    whose last character is whitespace, which it encodes as "=20" or "=09", can come out
    77 or 78 characters long: only such lines are split again.
    """
    quoted = binascii.b2a_qp(data, istext=True)
    if not (b"=20\n" in quoted or b"=09\n" in quoted or quoted.endswith((b"=20", b"=09"))):
        return quoted
    return b"\n".join(
        _split_qp_line(line) if len(line) > 76 else line for line in quoted.split(b"\n")
    )


def _split_qp_line(line: bytes) -> bytes:
    """``line`` in pieces of at most 76 characters joined by soft breaks ("=" + newline),
    never cutting an "=XX" escape."""
    pieces = []
    while len(line) > 76:
        cut = 75  # and the soft break's "=" makes 76
        if line[cut - 1] == ord("="):  # an escape starts at 74: it moves to the next piece
            cut -= 1
        elif line[cut - 2] == ord("="):
            cut -= 2
        pieces.append(line[:cut] + b"=")
        line = line[cut:]
    pieces.append(line)
    return b"\n".join(pieces)


def _lines_fit(text: str) -> bool:
    return len(text) <= HARD_LINE or all(len(line) <= HARD_LINE for line in text.split("\n"))


def _base64_length(size: int) -> int:
    return (size + 2) // 3 * 4 * 78 // 76


def _base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters (RFC 2045 6.8), CRLF between them."""
    encoded = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])


def _attachment_part(attachment: Attachment, disposition: str) -> _Entity:
    content_type, content_id = attachment.content_type, attachment.content_id or ""
    # Why: both are written as they are; the final check would let "\r\n " through as a
    # fold, harmless but still a line break of the payload's choosing.
    for header, value in (("Content-Type", content_type), ("Content-ID", content_id)):
        if not _VERBATIM.fullmatch(value):
            raise ValueError(f"the {header} header would hold a control or non-ASCII character")
    _utf8(attachment.filename, "Content-Disposition")  # quote() would fail less clearly
    encoding, body = _attachment_body(attachment)
    headers = [
        _with_params("Content-Type", content_type, _param("name", attachment.filename)),
        f"Content-Transfer-Encoding: {encoding}",
        _with_params("Content-Disposition", disposition, _param("filename", attachment.filename)),
    ]
    if content_id:
        headers.append(f"Content-ID: <{content_id}>")
    _head(headers)  # the only part headers made of payload data: check them as the top's
    return _Entity(headers, [body])


def _attachment_body(attachment: Attachment) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body): base64, but 7bit for message/* (RFC 2046 5.2.1
    forbids base64 there; see emailq.mediatypes for the rules the model enforces)."""
    if problem := mediatypes.composite_problem(attachment.content_type):
        raise ValueError(f"an attachment's Content-Type {problem}")
    if not mediatypes.is_message(attachment.content_type):
        return "base64", _base64_lines(attachment.content)
    lines = mediatypes.seven_bit_lines(attachment.content)
    if lines is None:
        raise ValueError("a message/* attachment is not 7-bit text (RFC 2046 5.2.1)")
    return "7bit", lines


def _multipart(
    subtype: str, parts: list[_Entity], sources: list[str], params: list[str] | None = None
) -> _Entity:
    boundary = _new_boundary(sources)
    content_type = _with_params(
        "Content-Type", f"multipart/{subtype}", [*(params or []), f'boundary="{boundary}"']
    )
    delimiter = f"--{boundary}\r\n".encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(delimiter)
        chunks.append(("\r\n".join(part.headers) + "\r\n\r\n").encode("ascii"))
        chunks += part.chunks
        chunks.append(b"\r\n")  # this CRLF belongs to the next delimiter (RFC 2046 5.1.1)
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return _Entity([content_type], chunks)


def _new_boundary(sources: list[str]) -> str:
    while True:
        boundary = "=_" + os.urandom(12).hex()
        if not any(boundary in source for source in sources):
            return boundary
