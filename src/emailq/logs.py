"""Logging for emailq's processes: one format, and no secret or address ever written out.

The settings know every secret they hold (passwords in URLs, API keys). A filter on the
handler replaces each of them in every record, whatever code logged it (ours, redis-py's,
aiosmtplib's, a traceback that quotes a URL), so a secret cannot reach a log by accident.
The same filter masks every email address (``g***@example.org``), any emailq API key and
any password in a URL, known to the settings or not. Lines are text, or JSON objects
(``log_format = "json"``) carrying ``message_id`` and ``lane`` when the call gives them
(``log.info(..., extra={"message_id": …})``). Bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emailq.settings import Settings

# Standard library only: the supervisor logs with this and loads no settings (pydantic).
REDACTED = "***"  # emailq.settings redacts URLs with the same mark
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The local part of an address in free text (an SMTP reply, a provider's error message).
_ADDRESS = re.compile(r"[^\s'\"<>()\[\],;:@]+@(?=[^\s'\"<>()\[\],;:@])")


# An emailq API key (keys.py: eq_<id>_<secret>) and a password in a URL's userinfo.
_API_KEY = re.compile(r"eq_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")


def mask_addresses(text: str) -> str:
    """``guest@example.org`` → ``g***@example.org``: enough to diagnose, not a person."""
    return _ADDRESS.sub(_masked, text)


def _masked(found: re.Match[str]) -> str:
    local = found[0][:-1]
    return f"{local[0]}***@" if local[0].isalnum() else "***@"


def scrub(text: str) -> str:
    """What no log line may hold, removed: addresses, API keys, passwords in URLs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return mask_addresses(_API_KEY.sub(f"eq_{REDACTED}", text))


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        exc_text = record.exc_text or ""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
            exc_text = exc_text.replace(secret, REDACTED)
        record.msg, record.args = scrub(text), None
        record.exc_text = scrub(exc_text) or None
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message (scrubbed by the filter),
    and the message id and lane when the call gave them."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("message_id", "lane", "tenant"):
            if hasattr(record, name):
                body[name] = getattr(record, name)
        if record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """The process's root handler: the format above, secrets redacted."""
    configure_handler(settings.log_format, settings.secrets(), level)


def configure_handler(log_format: str, secrets: Iterable[str], level: int = logging.INFO) -> None:
    """:func:`configure_logging` from what it reads of the settings (for the supervisor)."""
    handler = logging.StreamHandler()
    json_lines = log_format == "json"
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
