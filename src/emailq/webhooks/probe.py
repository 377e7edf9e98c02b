"""The check a receiver's URL passes at registration: an http(s) URL whose host is public
(webhooks/ssrf.py), and which does not answer with a redirect. Deliveries never follow a
redirect, so a URL that redirects would never be told anything; and where it points
inward, registering it is the SSRF attempt the rules are there to stop.

The probe is one GET through a pinned httpx client (webhooks/pinned.py: the sender's
checks, on httpx; no body read, nothing signed). A receiver that cannot be reached now is
still registered: its deliveries wait for it.
"""

from __future__ import annotations

import ssl
from urllib.parse import urljoin

import anyio.to_thread
import httpx

from emailq.webhooks.pinned import pinned_client
from emailq.webhooks.ssrf import Resolver, UrlRefused, check_url

PROBE_TIMEOUT_S = 3.0  # registration waits at most this long for the receiver


async def check_receiver(
    url: str,
    allow_private: bool,
    resolve: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Raise :class:`UrlRefused` unless ``url`` may be registered."""
    await anyio.to_thread.run_sync(check_url, url, allow_private, resolve)
    async with pinned_client(allow_private, PROBE_TIMEOUT_S, resolve, verify) as client:
        try:
            async with client.stream("GET", url) as response:
                location, status = response.headers.get("location"), response.status_code
                if response.is_redirect and location is not None:
                    target = urljoin(url, location)
                    why = await anyio.to_thread.run_sync(_redirect, target, status, resolve)
                    raise UrlRefused(why)
        except httpx.HTTPError:
            return  # not reachable now (or not speaking HTTP yet): deliveries will retry


def _redirect(target: str, status: int, resolve: Resolver | None) -> str:
    try:
        check_url(target, False, resolve)  # as if private ones were not allowed: say where
        where = ""
    except UrlRefused as error:
        where = f" ({error.args[0].split(';')[0]})"
    return (
        f"answers {status}, a redirect to {target}{where}; redirects are never followed:"
        " register the URL that takes the events"
    )
