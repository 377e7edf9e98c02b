"""Which receiver URLs emailq may call: http(s) only, and (unless the settings allow it)
never an address inside the network it runs in (SSRF: loopback, private, link-local such
as a cloud's metadata service at 169.254.169.254, and other reserved ranges).

A host name is resolved and every address it resolves to must be public. The check runs
at registration, and again on every connection the sender opens, on the very addresses it
then connects to (webhooks/poster.py; the probe's: webhooks/pinned.py): a name pointed
inward after registration, or answering differently from one lookup to the next (DNS
rebinding), is refused. Redirects are never followed, and a URL that answers with one is
refused at registration (webhooks/probe.py).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[Address]]  # (host, port) → its addresses; tests pass one


class UrlRefused(ValueError):
    """The URL may not be called; the message says why."""


def check_url(url: str, allow_private: bool = False, resolve: Resolver | None = None) -> None:
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
    if not allow_private:
        checked_addresses(host, port or (443 if parts.scheme == "https" else 80), resolve)


def checked_addresses(host: str, port: int, resolve: Resolver | None = None) -> list[Address]:
    """``host``'s addresses, once all of them are public; else :class:`UrlRefused`. One
    internal address among public ones is refused too: the connection could pick it."""
    addresses = (resolve or resolve_host)(host, port)
    if not addresses:
        raise UrlRefused(f"{host} does not resolve")
    for address in addresses:
        if not is_public(address):
            raise UrlRefused(
                f"{host} is {address}, an internal address (loopback, private, link-local or"
                " reserved); webhooks.allow_private_urls allows it"
            )
    return addresses


def resolve_host(host: str, port: int) -> list[Address]:
    """The system's resolver (an address literal is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise UrlRefused(f"{host} does not resolve: {error}") from None
    found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return list(dict.fromkeys(found))  # one per address, in the resolver's order


def is_public(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast
