"""Erasure by recipient (GDPR art. 17) and access (art. 15): the keyed hash that stands for
an address, and what an erasure answers.

Brokers index every message by the hashes of the addresses it names (from, to, cc, bcc,
reply-to), so an erasure finds its messages without reading a body and the audit trail
names recipients without holding one. The hash is an HMAC with a secret from the settings
(``privacy.hash_secret``): without the secret, a guest list cannot be hashed to match it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emailq.errors import ValidationError

if TYPE_CHECKING:
    from emailq.message import Email

HASH_CHARS = 32  # 128 bits of HMAC-SHA256, hex
# Used when no secret is set (a warning says so): hashes then only hide an address from
# someone who does not have emailq's source.
DEVELOPMENT_SECRET = "emailq-development-hash-secret"


class RecipientHasher:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the hash secret must not be empty")
        self._key = secret.encode()

    def hash(self, address: str) -> str:
        """The keyed hash of one address, case-insensitive (as mail systems treat them)."""
        normal = address.strip().lower().encode()
        return hmac.new(self._key, normal, hashlib.sha256).hexdigest()[:HASH_CHARS]

    def hashes(self, addresses: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({self.hash(address) for address in addresses}))


def checked_address(address: str, field: str = "recipient") -> str:
    """The address, validated as intake validates recipients; the error names ``field``."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValidationError(field, f"not a valid email address: {error}") from None
    return address.strip()


@dataclass(frozen=True, slots=True)
class ErasureCounts:
    """What one erasure did. A second run finds nothing left to do: every count 0 but
    ``messages`` (those still indexed, now holding no address or body)."""

    messages: int = 0  # messages that named the address
    cancelled: int = 0  # queued, scheduled or retrying mail that will not be sent
    in_flight: int = 0  # leased now: its stored copy is erased; a worker may finish the send
    erased: int = 0  # records whose body, recipients and idempotency key were removed now
    idempotency_keys: int = 0  # idempotency entries removed

    def __add__(self, other: ErasureCounts) -> ErasureCounts:
        return ErasureCounts(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _fields(counts: ErasureCounts) -> tuple[int, ...]:
    return tuple(getattr(counts, name) for name in counts.__dataclass_fields__)


def addresses_of(email: Email) -> list[str]:
    """Every address an email names: its sender, recipients and reply-to addresses."""
    return [email.sender.email, *email.recipients(), *(a.email for a in email.reply_to)]
