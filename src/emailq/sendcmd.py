"""What ``emailq send`` does: gather an email from flags or a file, then queue it."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from emailq.client import Client


def email_fields(path: str | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The email as the API's JSON shape: the file's fields, overridden by any flags."""
    data: dict[str, Any] = from_file(Path(path)) if path else {}
    simple = {"sender": "from", "subject": "subject", "text": "text", "html": "html",
              "idempotency_key": "idempotency_key", "send_at": "send_at",
              "expires_at": "expires_at", "max_attempts": "max_attempts"}  # fmt: skip
    for flag, field in simple.items():
        if flags.get(flag):
            data[field] = flags[flag]
    if flags.get("to"):
        data["to"] = list(flags["to"])
    if flags.get("kind") or flags.get("ceremony_at") or flags.get("wedding_id"):
        wedding = dict(data.get("wedding") or {})
        for flag in ("kind", "ceremony_at", "wedding_id"):
            if flags.get(flag):
                wedding[flag] = flags[flag]
        data["wedding"] = wedding
    return data


def from_file(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.suffix.lower() == ".json":
        loaded = json.loads(raw)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return loaded
    return from_eml(raw)


def from_eml(raw: bytes) -> dict[str, Any]:
    """The fields of an RFC 5322 message (addresses, subject, text and html bodies)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    data: dict[str, Any] = {"subject": str(message.get("subject", ""))}
    for header, field in (("from", "from"), ("to", "to"), ("cc", "cc"), ("reply-to", "reply_to")):
        if message.get(header):
            addresses = [str(a) for a in message[header].addresses]
            data[field] = addresses[0] if field == "from" else addresses
    for subtype in ("plain", "html"):
        part = message.get_body((subtype,))
        if part is not None:
            data["text" if subtype == "plain" else "html"] = part.get_content()
    return data


def send_via_api(api_url: str, api_key: str, data: dict[str, Any]) -> tuple[str, str]:
    with Client(api_url, api_key) as client:
        queued = client.send(data, data.get("idempotency_key"))
    return queued.id, queued.lane
