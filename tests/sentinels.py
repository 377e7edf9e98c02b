"""A Redis master, its replica and three Sentinels of our own on loopback, for the tests
that kill a master and watch emailq find the new one."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from emailq.sink import free_port

SERVICE = "mail"


@dataclass
class SentinelCluster:
    master: int
    replicas: list[int]
    sentinels: list[int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, prefix: str) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}?prefix={prefix}"

    def kill_master(self) -> None:
        """``kill -9``: no goodbye to the replica or the clients."""
        self.procs["master"].kill()
        self.procs["master"].wait(10)

    def role(self, port: int) -> str | None:
        reply = answers(port, "ROLE")
        return None if reply is None else bytes(reply[0]).decode()


def answers(port: int, *command: str) -> Any:
    """The reply of one server to one command, or None when it does not answer."""
    try:
        return redis.Redis(port=port, socket_timeout=1).execute_command(*command)
    except redis.RedisError:
        return None


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


@contextmanager
def sentinel_cluster(
    redis_server: str, tmp_path: Path, replicas: int = 1, down_after_ms: int = 1000
) -> Iterator[SentinelCluster]:
    """Quorum 2 of 3; a master is called down after ``down_after_ms`` of silence (the
    default is 30 s: a test need not wait that out; the retry budget is checked against it
    in test_redis_broker)."""
    cluster = SentinelCluster(
        free_port(), [free_port() for _ in range(replicas)], [free_port() for _ in range(3)]
    )
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--maxmemory-policy", "noeviction"]  # fmt: skip
    follow = ["--replicaof", "127.0.0.1", str(cluster.master)]
    servers = [("master", cluster.master, [])]
    servers += [(f"replica{n}", port, follow) for n, port in enumerate(cluster.replicas)]
    for name, port, extra in servers:
        folder = tmp_path / name
        folder.mkdir()
        cluster.procs[name] = subprocess.Popen(
            [redis_server, "--port", str(port),
             *common, "--dir", str(folder), "--logfile", str(folder / "redis.log"), *extra],
        )  # fmt: skip
    for n, port in enumerate(cluster.sentinels):
        folder = tmp_path / f"sentinel{n}"
        folder.mkdir()
        config = folder / "sentinel.conf"  # Sentinel rewrites its file: one each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {cluster.master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        cluster.procs[f"sentinel{n}"] = subprocess.Popen([redis_server, str(config), "--sentinel"])
    try:
        for port in cluster.replicas:
            wait_until(lambda port=port: _linked(port), f"replication to {port}")  # type: ignore[misc]
        for port in cluster.sentinels:  # each knows the replicas and the two other Sentinels
            wait_until(lambda port=port: _knows_everyone(port, replicas),  # type: ignore[misc]
                       f"Sentinel {port} discovery")  # fmt: skip
        yield cluster
    finally:
        for proc in cluster.procs.values():
            proc.kill()
            proc.wait(timeout=10)


def _linked(port: int) -> bool:
    return (answers(port, "INFO", "replication") or {}).get("master_link_status") == "up"


def _knows_everyone(port: int, replicas: int) -> bool:
    try:
        state = redis.Redis(port=port, socket_timeout=1).sentinel_master(SERVICE)
    except redis.RedisError:
        return False
    return bool(state["num-slaves"] == replicas and state["num-other-sentinels"] == 2)
