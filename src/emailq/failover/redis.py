"""Provider health in Redis, shared by every worker of the queue on every machine.

Keys (beside the queue's, under its prefix): ``{prefix}:providers:health`` a hash of
provider name → JSON record; ``{prefix}:providers:checker`` the checker lease (expires by
itself when its holder dies).
"""

from __future__ import annotations

from importlib import resources

import redis

from emailq.failover.state import ProviderHealth
from emailq.failover.store import Change, HealthStore

_LEASE_SCRIPT = resources.files("emailq.failover").joinpath("checker_lease.lua").read_text()


class RedisHealthStore(HealthStore):
    def __init__(self, client: redis.Redis, prefix: str = "emailq") -> None:
        self.client = client
        self.health_key = f"{{{prefix}}}:providers:health"
        self.checker_key = f"{{{prefix}}}:providers:checker"
        self._lease = client.register_script(_LEASE_SCRIPT)

    def read(self) -> dict[str, ProviderHealth]:
        raw = self.client.hgetall(self.health_key)
        return {
            name.decode() if isinstance(name, bytes) else str(name): ProviderHealth.from_json(
                record
            )
            for name, record in raw.items()
        }

    def update(self, name: str, change: Change) -> ProviderHealth:
        result: list[ProviderHealth] = []

        def apply(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(self.health_key, name)
            record = change(ProviderHealth.from_json(raw) if raw else ProviderHealth(name))
            pipe.multi()
            pipe.hset(self.health_key, name, record.to_json())
            result[:] = [record]

        self.client.transaction(apply, self.health_key)  # retried if another wrote meanwhile
        return result[0]

    def hold_checker(self, holder: str, lease_s: float) -> bool:
        return bool(self._lease(keys=[self.checker_key], args=[holder, round(lease_s * 1000)]))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
