"""Settings from the environment (``EMAILQ_*``); the CLI's flags override them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from emailq.broker import DEFAULT_URL


@dataclass(frozen=True)
class Settings:
    broker_url: str = DEFAULT_URL
    provider_url: str = "smtp://127.0.0.1:25"
    domain: str = "emailq.local"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        return cls(
            broker_url=source.get("EMAILQ_BROKER_URL", DEFAULT_URL),
            provider_url=source.get("EMAILQ_PROVIDER_URL", cls.provider_url),
            domain=source.get("EMAILQ_DOMAIN", cls.domain),
        )
