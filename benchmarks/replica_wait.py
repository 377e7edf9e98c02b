"""What ``?wait=1`` costs at intake: enqueues acknowledged by the master alone, against
enqueues acknowledged once a replica has them (Redis WAIT after each call).

    .venv/bin/python benchmarks/replica_wait.py [--n 5000]

Starts a redis-server master and one replica of its own on loopback (free ports, a
temporary folder), then enqueues ``--n`` messages of 1.5 KB one per call (the API's
``POST /v1/emails``) and in calls of 100 (a guest list), with and without the wait.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from emailq.broker import NewMessage, open_broker
from emailq.sink import free_port

PAYLOAD = os.urandom(1536)


@contextmanager
def master_and_replica() -> Iterator[int]:
    program = shutil.which("redis-server")
    assert program, "redis-server is not installed"
    master, replica = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder,
                  "--maxmemory-policy", "noeviction"]  # fmt: skip
        procs = [
            subprocess.Popen([program, "--port", str(master), *common], stdout=subprocess.DEVNULL),
            subprocess.Popen(
                [program, "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(master)],
                stdout=subprocess.DEVNULL,
            ),
        ]
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    info = redis.Redis(port=replica).info("replication")
                    if info.get("master_link_status") == "up":
                        break
                except redis.RedisError:
                    pass
                assert time.monotonic() < deadline, "the replica did not link up"
                time.sleep(0.05)
            yield master
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def rate(url: str, n: int, per_call: int) -> float:
    with open_broker(url) as broker:
        started = time.perf_counter()
        for _ in range(n // per_call):
            broker.enqueue_many([NewMessage(PAYLOAD) for _ in range(per_call)])
        elapsed = time.perf_counter() - started
        broker.purge()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n
    with master_and_replica() as port:
        for per_call in (1, 100):
            plain = rate(f"redis://127.0.0.1:{port}/0?prefix=plain", n, per_call)
            waited = rate(f"redis://127.0.0.1:{port}/0?prefix=waited&wait=1", n, per_call)
            print(f"{per_call:>3} per call: {plain:8.0f} msg/s acknowledged by the master,"
                  f" {waited:8.0f} msg/s with ?wait=1 ({waited / plain:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
