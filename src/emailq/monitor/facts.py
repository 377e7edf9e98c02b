"""What the monitor needs from a payload, read without parsing it: the worker's hot path.

Payloads are the compact JSON of :meth:`emailq.message.Email.to_payload`. A quote inside a
JSON string is escaped, so ``"send_at":"`` can only be the key itself; ``wedding_id`` is
looked for after ``"wedding":{`` (a tag may be named ``wedding_id``, but tags are strings,
so no tag value opens an object).
"""

from __future__ import annotations

import json
from datetime import datetime

_SEND_AT = b'"send_at":"'
_WEDDING = b'"wedding":{'
_WEDDING_ID = b'"wedding_id":"'


def _string_after(payload: bytes, marker: bytes, start: int = 0) -> str | None:
    at = payload.find(marker, start)
    if at < 0:
        return None
    begin = at + len(marker)
    end = payload.find(b'"', begin)
    while end > 0 and payload[end - 1] == 0x5C:  # an escaped quote: the string goes on
        end = payload.find(b'"', end + 1)
    if end < 0:
        return None
    raw = payload[begin:end]
    if b"\\" in raw:
        decoded = json.loads(b'"' + raw + b'"')
        return decoded if isinstance(decoded, str) else None
    return raw.decode("utf-8", "replace")


def send_at(payload: bytes) -> float | None:
    """The email's ``send_at`` as epoch seconds, or None."""
    text = _string_after(payload, _SEND_AT)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def wedding_id(payload: bytes) -> str | None:
    at = payload.find(_WEDDING)
    if at < 0:
        return None
    return _string_after(payload, _WEDDING_ID, at)
