"""Which From domains a tenant may send from (``api.from_domains``): a tenant named there
may use those domains only; the others, any."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from emailq.errors import FieldError, InvalidEmail
from emailq.message import Email


def check_from_domains(
    emails: Iterable[Email], tenant: str, allowed: Mapping[str, frozenset[str]], field: str
) -> None:
    """Refuse (422 naming ``field``) an email whose From domain the tenant may not use."""
    domains = allowed.get(tenant)
    if domains is None:
        return
    for email in emails:
        domain = email.sender.email.rpartition("@")[2].lower()
        if domain not in domains:
            listed = ", ".join(sorted(domains)) or "none"
            message = f"tenant {tenant!r} may send from these domains only: {listed}"
            raise InvalidEmail([FieldError(field, message)])
