"""``?wait=N``: an enqueue acknowledged only once N Redis replicas have it.

Replication is asynchronous: a failover promotes a replica that may lack the master's
last writes, so mail the API answered 202 for can vanish (README, "Redis durability").
With ``?wait=N`` each enqueue is followed by Redis ``WAIT`` on the same connection, and
the caller hears 202 only after N replicas confirmed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis

from emailq.errors import BrokerUnavailable, ConfigurationError


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """``?wait=N[&wait_ms=M]``. Fewer than ``N`` replicas within ``M`` ms (default 1000):
    the enqueue fails as unavailable (503). The mail may be stored all the same; a retry
    with the same idempotency key finds it instead of storing a second copy."""

    replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def pop_from(cls, query: dict[str, list[str]]) -> ReplicaWait:
        """Take the options out of a parsed query (they are the broker's, not redis-py's)."""
        replicas = query.pop("wait", ["0"])[-1]
        timeout_ms = query.pop("wait_ms", ["1000"])[-1]
        if not replicas.isdigit() or not timeout_ms.isdigit() or int(timeout_ms) < 1:
            raise ConfigurationError(
                "?wait= is how many replicas must confirm each enqueue (0 or more) and"
                f" ?wait_ms= for how long, at least 1: wait={replicas!r}, wait_ms={timeout_ms!r}"
            )
        return cls(int(replicas), int(timeout_ms))


def replica_wait(url: str) -> ReplicaWait:
    """The ``?wait=`` of a broker URL."""
    return ReplicaWait.pop_from(parse_qs(urlsplit(url).query, keep_blank_values=True))


def enqueue_replicated(
    client: redis.Redis,
    wait: ReplicaWait,
    payloads: dict[str, bytes],
    script: tuple[str, Sequence[str], Sequence[Any]],
) -> Any:
    """MSET + the enqueue script in one MULTI, then WAIT, on one connection: WAIT counts
    the replicas that have this connection's last write (inside MULTI it does not block,
    and on another connection of the pool it would vouch for older writes). Returns the
    script's reply."""
    text, keys, args = script
    pipe = client.pipeline(transaction=False)  # MULTI by hand, so WAIT can follow EXEC
    pipe.execute_command("MULTI")  # type: ignore[no-untyped-call]
    pipe.mset(payloads)
    pipe.eval(text, len(keys), *keys, *args)
    pipe.execute_command("EXEC")  # type: ignore[no-untyped-call]
    pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)  # type: ignore[no-untyped-call]
    *_, done, replicas = pipe.execute()
    for reply in done:  # an error inside EXEC is a reply, not raised by the pipeline
        if isinstance(reply, Exception):
            raise reply
    if int(replicas) < wait.replicas:
        raise BrokerUnavailable(
            f"only {replicas} of {wait.replicas} Redis replicas confirmed the write within"
            f" {wait.timeout_ms} ms (?wait=): not acknowledged"
        )
    return done[1]
