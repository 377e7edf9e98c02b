"""The monitor's store under the queue's Redis prefix (one hash tag, as the broker's keys):

    {p}:mon:samples      stream: worker samples, capped at about SAMPLE_CAP entries
    {p}:mon:cursor       string: the last sample id taken into a snapshot
    {p}:mon:history      hash: slot (ms) → snapshot JSON
    {p}:mon:history:at   zset: slot (ms) → slot, the time index
    {p}:mon:lease        string: the writing monitor, with a TTL
    {p}:mon:kv:<name>    string: alert states, silences, fleet totals

Each state change is one script (``lua/*.lua``): a snapshot is written only by the lease
holder and once per slot, so two monitors never write two series.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from emailq.clock import Clock, now
from emailq.monitor.store import MonitorStore, Samples

SAMPLE_CAP = 100_000  # a few hours of 20 workers' samples, should no monitor read them


def _script(name: str) -> str:
    return resources.files("emailq.monitor").joinpath(f"lua/{name}.lua").read_text()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _next_id(stream_id: str) -> str:
    """The smallest stream id after ``stream_id`` (XTRIM MINID keeps ids from it on)."""
    millis, _, seq = stream_id.partition("-")
    return f"{millis}-{int(seq or 0) + 1}"


class RedisMonitorStore(MonitorStore):
    def __init__(self, client: redis.Redis, prefix: str, clock: Clock = now) -> None:
        super().__init__(clock)
        self.client = client
        base = f"{{{prefix}}}:mon"
        self.samples_key = f"{base}:samples"
        self.cursor_key = f"{base}:cursor"
        self.history_key = f"{base}:history"
        self.index_key = f"{base}:history:at"
        self.lease_key = f"{base}:lease"
        self.kv_base = f"{base}:kv:"
        self._scripts = {
            name: client.register_script(_script(name))
            for name in ("acquire_lease", "release_lease", "write_snapshot", "read_history")
        }

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    def publish_sample(self, body: bytes) -> None:
        self.client.xadd(self.samples_key, {"b": body}, maxlen=SAMPLE_CAP, approximate=True)

    def take_samples(self, limit: int = 20_000) -> Samples:
        stored: bytes | None = self.client.get(self.cursor_key)  # type: ignore[assignment]
        after = stored.decode() if stored else "0-0"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(  # type: ignore[assignment]
            self.samples_key, min=f"({after}", max="+", count=limit
        )
        cursor = entries[-1][0].decode() if entries else after
        return Samples([fields[b"b"] for _, fields in entries], cursor)

    def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        return bool(self._run("acquire_lease", [self.lease_key], [owner, max(1, _ms(ttl_s))]))

    def release_lease(self, owner: str) -> None:
        self._run("release_lease", [self.lease_key], [owner])

    def write_snapshot(
        self, owner: str, at: float, body: bytes, cursor: str, keep_after: float, max_points: int
    ) -> bool:
        keys = [self.lease_key, self.history_key, self.index_key, self.cursor_key,
                self.samples_key]  # fmt: skip
        args = [owner, _ms(at), body, cursor, _next_id(cursor) if cursor != "0-0" else "",
                _ms(keep_after), max_points]  # fmt: skip
        return int(self._run("write_snapshot", keys, args)) == 1

    def history(self, since: float, until: float) -> list[tuple[float, bytes]]:
        reply = self._run("read_history", [self.history_key, self.index_key],
                          [_ms(since), _ms(until)])  # fmt: skip
        return [(int(reply[i]) / 1000, reply[i + 1]) for i in range(0, len(reply), 2)]

    def get(self, name: str) -> bytes | None:
        value: bytes | None = self.client.get(self.kv_base + name)  # type: ignore[assignment]
        return value

    def put(self, name: str, body: bytes) -> None:
        self.client.set(self.kv_base + name, body)
