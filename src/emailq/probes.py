"""Cheap reachability checks for readiness: can we reach the provider at all."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 1.0  # seconds


def provider_reachable(provider_url: str) -> bool:
    """For SMTP, a server that greets with 220 (then a QUIT); providers reached over HTTP
    (Resend) or a folder count as up (their own checks belong to the provider chain).
    A chain (URLs joined by commas) is reachable when any of its providers is."""
    return any(_reachable(url.strip()) for url in provider_url.split(","))


def _reachable(provider_url: str) -> bool:
    try:
        parts = urlsplit(provider_url)
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:
        return False
    if parts.scheme not in ("smtp", "smtps"):
        return True
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", port), CONNECT_TIMEOUT
        ) as conn:
            if parts.scheme == "smtps":  # the greeting comes after TLS: connecting is enough
                return True
            # An SMTP server greets with 220; QUIT lets it close its side in order.
            greeting = conn.recv(512)
            conn.sendall(b"QUIT\r\n")
            conn.recv(512)
            return greeting.startswith(b"220")
    except OSError:
        return False
