"""A health-checked provider chain's state: rules (state), shared records (store, sqlite,
redis) and each process's view of them (board). The chain itself: providers/chain.py."""

from emailq.failover.board import BoardMetrics, HealthBoard
from emailq.failover.state import FailoverPolicy, ProviderHealth
from emailq.failover.store import HealthStore, MemoryHealthStore

__all__ = [
    "BoardMetrics",
    "FailoverPolicy",
    "HealthBoard",
    "HealthStore",
    "MemoryHealthStore",
    "ProviderHealth",
]
