"""Logging for emailq's processes: one format, and no secret ever written out.

The settings know every secret they hold (passwords in URLs, API keys). A filter on the
handler replaces each of them in every record, whatever code logged it (ours, redis-py's,
aiosmtplib's, a traceback that quotes a URL), so a secret cannot reach a log by accident.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from emailq.settings import REDACTED, Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The local part of an address in free text (an SMTP reply, a provider's error message).
_ADDRESS = re.compile(r"[^\s'\"<>()\[\],;:@]+@(?=[^\s'\"<>()\[\],;:@])")


def mask_addresses(text: str) -> str:
    """``guest@example.org`` → ``***@example.org``: enough to diagnose, not a person."""
    return _ADDRESS.sub("***@", text)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        exc_text = record.exc_text or ""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
            exc_text = exc_text.replace(secret, REDACTED)
        record.msg, record.args = text, None
        record.exc_text = exc_text or None
        return True


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """The process's root handler: the format above, secrets redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(settings.secrets()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
