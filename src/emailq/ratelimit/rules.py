"""Which limits a message must pass: its provider's, its recipients' domains', its tenant's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from emailq.ratelimit.base import Limit, LimitRequest


@dataclass(frozen=True, slots=True)
class RateRules:
    """Messages per second (with bursts); None means no limit of that kind."""

    provider_rate: float | None = None
    provider_burst: float = 10.0
    domain_rate: float | None = None
    domain_burst: float = 5.0
    domain_rates: Mapping[str, float] = field(default_factory=dict)  # e.g. {"gmail.com": 50}
    tenant_rate: float | None = None
    tenant_burst: float = 20.0
    tenant_rates: Mapping[str, float] = field(default_factory=dict)
    # The share of every burst that only critical mail may spend (LimitRequest.reserve).
    critical_reserve: float = 0.2

    @property
    def active(self) -> bool:
        return bool(
            self.provider_rate or self.domain_rate or self.domain_rates or self.tenant_rate
            or self.tenant_rates
        )  # fmt: skip

    def request(
        self, provider: str, tenant: str, recipients: tuple[str, ...], *, critical: bool = False
    ) -> LimitRequest:
        """The limits one message must pass; non-critical mail leaves ``critical_reserve``
        of each burst to critical mail."""
        limits: list[Limit] = []
        if self.provider_rate:
            limits.append(Limit(f"provider:{provider}", self.provider_rate, self.provider_burst))
        for domain in sorted({r.rpartition("@")[2].lower() for r in recipients}):
            rate = self.domain_rates.get(domain, self.domain_rate)
            if rate:
                limits.append(Limit(f"domain:{domain}", rate, self.domain_burst))
        tenant_rate = self.tenant_rates.get(tenant, self.tenant_rate)
        if tenant_rate:
            limits.append(Limit(f"tenant:{tenant}", tenant_rate, self.tenant_burst))
        return LimitRequest(tuple(limits), reserve=0.0 if critical else self.critical_reserve)
