"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, keyed by a per-endpoint ``whsec_<base64>`` secret. Signed by the
spec's own reference package, so a receiver using any Standard Webhooks library verifies."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """24 random bytes (192 bits; the spec asks for 24 to 64), as ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(secret: str, event_id: str, at: float, body: str) -> dict[str, str]:
    """The three headers for one attempt: ``at`` (epoch seconds) is when it is sent."""
    timestamp = datetime.fromtimestamp(int(at), UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": Webhook(secret).sign(event_id, timestamp, body),
        "content-type": "application/json",
    }
