"""An attachment's media type: its grammar (RFC 2045) and the rules for composite types.

The model (:mod:`emailq.message`) refuses what breaks them at intake; the renderer
(:mod:`emailq.mime`) refuses again, whatever path a payload took.

Composite types, decided so that every reader gets the attachment back:

- ``multipart/*`` is refused: a multipart entity is made of parts and a boundary, which
  the renderer builds from the email's own fields; as opaque content (base64, no
  boundary) every parser loses it. Send such a file as ``application/octet-stream``.
- ``message/partial`` and ``message/external-body`` are refused: they ask the reader to
  reassemble fragments or to fetch content from elsewhere (RFC 2046 5.2.2, 5.2.3).
- Any other ``message/*`` (``message/rfc822`` above all, a forwarded ``.eml``) may only
  be 7bit, 8bit or binary (RFC 2045 6.4, RFC 2046 5.2.1), never base64. The renderer
  sends no 8-bit data (so no 8BITMIME is needed on the way), so it goes as 7bit: its
  content must be ASCII without NUL, in lines of at most 998 characters; CRLF, CR and
  LF are each a line break, sent as CRLF. Other content is refused, or, when the type
  was only guessed from the filename, sent as ``application/octet-stream``.
"""

import mimetypes
import re

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # RFC 2045 token: no space, control or tspecial
# RFC 2231 attribute-char: a token but "*", "'" and "%", so no extended parameter
# (x*=utf-8''%0D%0A), which parsers decode, to CR and LF as readily as to anything else.
_ATTRIBUTE = r"[A-Za-z0-9!#$&+.^_`|~-]+"
_QUOTED = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # printable ASCII; no quoted-pair needed
CONTENT_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_ATTRIBUTE}=(?:{_TOKEN}|{_QUOTED}))*"
)
OCTET_STREAM = "application/octet-stream"
HARD_LINE = 998  # RFC 5322 2.1.1: a line MUST be at most 998 characters


def media_type(content_type: str) -> str:
    """``type/subtype`` in lower case, without parameters."""
    return content_type.partition(";")[0].strip().lower()


def composite_problem(content_type: str) -> str:
    """Why ``content_type`` cannot be an attachment's, whatever its content; "" if it can."""
    media = media_type(content_type)
    if media.startswith("multipart/"):
        return (
            "must not be multipart/*: the email's own parts make its multipart structure"
            " (send the file as application/octet-stream)"
        )
    if media in ("message/partial", "message/external-body"):
        return "must not be message/partial or message/external-body (RFC 2046 5.2.2, 5.2.3)"
    return ""


def is_message(content_type: str) -> bool:
    return content_type[:8].lower() == "message/"


def seven_bit_lines(content: bytes) -> bytes | None:
    """``content`` with CRLF line breaks if it can be sent as 7bit, else None."""
    if not content.isascii() or b"\0" in content:
        return None
    lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if max(map(len, lines)) > HARD_LINE:
        return None
    return b"\r\n".join(lines)


def guess(filename: str) -> str:
    """The media type a filename's extension suggests, when an attachment may be one,
    else application/octet-stream. A message/* guess holds only if the content is 7-bit
    (:func:`seven_bit_lines`): the caller checks, as it alone has the content."""
    # Only the extension: guess_type would read "data:x/y,..." as a data: URL.
    if "." not in filename:
        return OCTET_STREAM
    guessed, encoding = mimetypes.guess_type("file." + filename.rpartition(".")[2])
    if encoding or not guessed or composite_problem(guessed):
        return OCTET_STREAM  # .vpm is multipart/voice-message to mimetypes, say
    return guessed
