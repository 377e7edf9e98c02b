"""Payloads sealed at rest: AES-256-GCM, each payload naming the key that sealed it.

``EMAILQ_ENCRYPTION_KEYS`` lists keys as ``id:base64`` separated by commas, the first the
one that seals; the others still open what they sealed, so a key is rotated by putting a
new one first, running ``emailq rotate-keys`` (which re-seals every stored payload), then
dropping the old one. A sealed payload is ``EQS1`` + key id length (1 byte) + key id +
nonce (12 bytes) + ciphertext and tag.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by a Sealer (~6 MB): a queue without keys never loads it
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"EQS1"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SealError(ValueError):
    """A payload that cannot be opened here: its key is missing, or it was tampered with."""


def parse_keys(text: str) -> dict[str, bytes]:
    """``id:base64[,id:base64…]`` → key id → key, in order (the first seals); ValueError
    saying what is wrong, never showing a key."""
    keys: dict[str, bytes] = {}
    for index, item in enumerate(part.strip() for part in text.split(",")):
        key_id, sep, encoded = item.partition(":")
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"key {index + 1} must look like id:base64 (id: A-Z a-z 0-9 _ . -)")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"key {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"key {key_id!r} is {len(key)} bytes; AES-256 keys are {KEY_BYTES} bytes"
                " (44 base64 characters: openssl rand -base64 32)"
            )
        if key_id in keys:
            raise ValueError(f"key id {key_id!r} is given twice")
        keys[key_id] = key
    return keys


@dataclass(frozen=True)
class Sealer:
    """Seals with the first key; opens with any key it holds."""

    keys: Mapping[str, bytes]
    _ciphers: Mapping[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a sealer needs at least one key")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        # One cipher object per key, made once: building one costs more than sealing 1.5 KB.
        object.__setattr__(self, "_ciphers", {k: AESGCM(v) for k, v in self.keys.items()})

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        return cls(parse_keys(text))

    @property
    def current(self) -> str:
        return next(iter(self.keys))

    def seal(self, payload: bytes) -> bytes:
        key_id = self.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload, None)
        return MAGIC + bytes([len(key_id)]) + key_id.encode() + nonce + sealed

    def open(self, payload: bytes) -> bytes:
        """The plain payload; an unsealed one (stored before sealing was on) as it is."""
        if not is_sealed(payload):
            return payload
        key_id = sealed_with(payload)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealError(
                f"the payload is sealed with key {key_id!r}, which is not among"
                " EMAILQ_ENCRYPTION_KEYS; it waits until that key is back"
            )
        start = len(MAGIC) + 1 + len(key_id)
        nonce, sealed = payload[start : start + NONCE_BYTES], payload[start + NONCE_BYTES :]
        from cryptography.exceptions import InvalidTag

        try:
            return cipher.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise SealError(f"the payload does not open with key {key_id!r}") from None

    def needs_resealing(self, payload: bytes) -> bool:
        return bool(payload) and (not is_sealed(payload) or sealed_with(payload) != self.current)


def is_sealed(payload: bytes) -> bool:
    return payload[: len(MAGIC)] == MAGIC


def sealed_with(payload: bytes) -> str:
    length = payload[len(MAGIC)]
    return payload[len(MAGIC) + 1 : len(MAGIC) + 1 + length].decode()
