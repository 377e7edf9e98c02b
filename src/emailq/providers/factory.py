"""Open a provider from a URL, the way brokers are opened.

``smtp://[user:password@]host[:port][?pool=N&starttls=auto|yes|no&timeout=30]`` (without
``pool``, as many connections as the relay's reply time says help)
(``&auth=plaintext`` allows a password over a connection without TLS),
``smtps://…`` (implicit TLS, port 465); certificates are verified, against
``&ca_file=/path/ca.pem`` when given, and ``&cert_file=…&key_file=…`` present a client
certificate; ``file:///path/to/folder``,
``resend://[api_key@]api.resend.com`` (key from the settings when not in the URL;
``resend+http://127.0.0.1:8025`` reaches a local stand-in over plain HTTP).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from emailq.errors import ConfigurationError
from emailq.providers.base import Provider

_STARTTLS = {"auto": None, "yes": True, "no": False}


def open_provider(url: str, resend_api_key: str | None = None) -> Provider:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("smtp", "smtps"):
        from emailq.providers.smtp import SmtpProvider, SmtpSettings

        implicit = parts.scheme == "smtps"
        starttls = query.get("starttls", "auto")
        if starttls not in _STARTTLS:
            raise ConfigurationError("starttls must be auto, yes or no")
        return SmtpProvider(
            SmtpSettings(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or (465 if implicit else 25),
                pool_size=_positive_int(query["pool"], "pool") if "pool" in query else None,
                timeout=float(query.get("timeout", "30")),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                start_tls=False if implicit else _STARTTLS[starttls],
                use_tls=implicit,
                allow_plaintext_auth=query.get("auth") == "plaintext",
                ca_file=query.get("ca_file"),
                cert_file=query.get("cert_file"),
                key_file=query.get("key_file"),
            )
        )
    if parts.scheme == "file":
        from emailq.providers.file import FileProvider

        return FileProvider(unquote(parts.path))
    if parts.scheme in ("resend", "resend+http"):
        from emailq.providers.resend import ResendProvider, ResendSettings

        key = unquote(parts.username or "") or resend_api_key
        if not key:
            raise ConfigurationError(
                "Resend needs an API key: set RESEND_API_KEY or provider.resend_api_key"
            )
        scheme = "http" if parts.scheme == "resend+http" else "https"
        return ResendProvider(
            ResendSettings(
                api_key=key,
                base_url=f"{scheme}://{parts.hostname or 'api.resend.com'}"
                + (f":{parts.port}" if parts.port else ""),
            )
        )
    raise ConfigurationError(
        f"unknown provider URL scheme {parts.scheme!r}: use smtp://, smtps://, file:// or resend://"
    )


def provider_names(urls: list[str]) -> list[str]:
    """A name for each provider of a chain, for logs, metrics and the shared health records:
    scheme://host[:port], never credentials; a repeated one gets #2, #3 …"""
    names: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        name = f"{parts.scheme}://{host}{parts.path if parts.scheme == 'file' else ''}"
        base, n = name, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names.append(name)
    return names


def _positive_int(text: str, name: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(f"?{name}= must be a whole number of at least 1: {text!r}")
    return int(text)
