"""Rate limits shared by every worker: per provider, per recipient domain, per tenant.

A limit is a GCRA (generic cell rate algorithm: a token bucket kept as one timestamp per
key). A request names every limit it must pass, and either passes them all or none, so a
message never spends a provider's budget while its domain's limit holds it back. A denied
request is told how long to wait; a limited message waits, it is not failed.
"""

from emailq.ratelimit.base import Grant, Limit, Limiter, LimitRequest
from emailq.ratelimit.memory import MemoryLimiter

__all__ = ["Grant", "Limit", "LimitRequest", "Limiter", "MemoryLimiter"]
