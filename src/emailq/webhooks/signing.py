"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, keyed by a per-endpoint ``whsec_<base64>`` secret.

Signed with ``hmac`` directly, the key decoded once per secret: the spec's reference
package decodes the secret and builds a datetime on every call, which showed in the
sender's profile. tests/test_webhooks.py checks these signatures with that package and
with the spec's algorithm written out independently."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """24 random bytes (192 bits; the spec asks for 24 to 64), as ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


@functools.lru_cache(maxsize=1024)
def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signed_headers(secret: str, event_id: str, at: float, body: str | bytes) -> dict[str, str]:
    """The webhook headers for one attempt: ``at`` (epoch seconds) is when it is sent."""
    timestamp = str(int(at))
    content = body.encode() if isinstance(body, str) else body
    signed = b"%s.%s.%s" % (event_id.encode(), timestamp.encode(), content)
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
