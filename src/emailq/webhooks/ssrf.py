"""Which receiver URLs emailq may call: http(s) only, and (unless the settings allow it)
never an address inside the network it runs in (SSRF: loopback, private, link-local such
as a cloud's metadata service at 169.254.169.254, and other reserved ranges).

A host name is resolved and every address it resolves to must be public; the check runs
at registration and again before every delivery (a name may be pointed elsewhere later).
Redirects are never followed (the sender's HTTP client does not), so a public URL cannot
bounce a request inward.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UrlRefused(ValueError):
    """The URL may not be called; the message says why."""


def check_url(url: str, allow_private: bool = False) -> None:
    """Raise :class:`UrlRefused` unless ``url`` is an http(s) URL emailq may call."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UrlRefused(f"not a URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("must be an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise UrlRefused("must name a host")
    if parts.username or parts.password:
        raise UrlRefused("must not hold credentials")
    if allow_private:
        return
    for address in resolve(host, port or (443 if parts.scheme == "https" else 80)):
        if not _public(address):
            raise UrlRefused(
                f"{host} is {address}, an internal address (loopback, private, link-local or"
                " reserved); webhooks.allow_private_urls allows it"
            )


def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise UrlRefused(f"{host} does not resolve: {error}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast
