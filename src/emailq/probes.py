"""Cheap reachability checks for readiness: can we reach the provider at all."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 1.0  # seconds


def provider_reachable(provider_url: str) -> bool:
    """A TCP connect for SMTP; providers reached over HTTP (Resend) or a folder count as up
    (their own checks belong to the provider chain's health checks)."""
    try:
        parts = urlsplit(provider_url)
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:
        return False
    if parts.scheme not in ("smtp", "smtps"):
        return True
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), CONNECT_TIMEOUT):
            return True
    except OSError:
        return False
