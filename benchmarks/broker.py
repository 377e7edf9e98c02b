"""Broker throughput, per backend: enqueue, lease+complete, and the full cycle.

    .venv/bin/python benchmarks/broker.py [--n 20000] [--backends sqlite,sqlite-normal,redis]

Batches of 100 messages with 1.5 KB payloads, one process, real clock. Beside each backend
it prints a bare-engine figure measured in the same run: the least the same engine must do per
message (SQLite: insert, then update + delete by key, in batched transactions; Redis:
pipelined ZADD, then ZPOPMIN + DEL), so the ratio shows what the broker's bookkeeping costs.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from emailq.broker import Broker, NewMessage, open_broker
from emailq.lanes import LANE_ORDER

BATCH = 100
PAYLOAD = os.urandom(1536)
REDIS_URL = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TARGETS = {"redis": 20_000, "sqlite": 5_000, "sqlite-normal": 5_000}


def batches(n: int) -> list[list[NewMessage]]:
    lanes = LANE_ORDER
    return [
        [NewMessage(PAYLOAD, lane=lanes[(b + i) % len(lanes)]) for i in range(BATCH)]
        for b in range(0, n, BATCH)
    ]


def rate(n: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return n / (time.perf_counter() - started)


def drain(broker: Broker) -> None:
    while jobs := broker.lease("bench", BATCH, 60):
        broker.complete(jobs)


def measure(broker: Broker, n: int) -> dict[str, float]:
    work = batches(n)
    enqueue = rate(n, lambda: [broker.enqueue_many(b) for b in work])
    lease_complete = rate(n, lambda: drain(broker))
    broker.purge()

    def cycle() -> None:
        for b in work:
            broker.complete(broker.lease("bench", BATCH, 60) if broker.enqueue_many(b) else [])

    full = rate(n, cycle)
    broker.purge()
    return {"enqueue_many": enqueue, "lease+complete": lease_complete, "full cycle": full}


def sqlite_ceiling(path: Path, n: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE q (id TEXT PRIMARY KEY, payload BLOB, state INT) WITHOUT ROWID")
    ids = [[uuid.uuid4().hex for _ in range(BATCH)] for _ in range(0, n, BATCH)]

    def insert() -> None:
        for chunk in ids:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO q VALUES (?, ?, 0)", [(i, PAYLOAD) for i in chunk])
            db.execute("COMMIT")

    def take() -> None:
        for chunk in ids:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE q SET state = 1 WHERE id = ?", [(i,) for i in chunk])
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM q WHERE id = ?", [(i,) for i in chunk])
            db.execute("COMMIT")

    result = {"enqueue_many": rate(n, insert), "lease+complete": rate(n, take)}
    db.close()
    return result


def redis_ceiling(n: int) -> dict[str, float]:
    client = redis.Redis.from_url(REDIS_URL)
    key = f"emailq-bench-ceiling-{uuid.uuid4().hex}"
    ids = [[uuid.uuid4().hex for _ in range(BATCH)] for _ in range(0, n, BATCH)]

    def insert() -> None:
        for chunk in ids:
            pipe = client.pipeline(transaction=False)
            for i in chunk:
                pipe.set(f"{key}:{i}", PAYLOAD)
            pipe.zadd(key, dict.fromkeys(chunk, 1.0))
            pipe.execute()

    def take() -> None:
        while popped := client.zpopmin(key, BATCH):
            names = [f"{key}:{member.decode()}" for member, _ in popped]
            pipe = client.pipeline(transaction=False)
            pipe.mget(names)
            pipe.delete(*names)
            pipe.execute()

    result = {"enqueue_many": rate(n, insert), "lease+complete": rate(n, take)}
    client.close()
    return result


def open_backend(name: str, tmp: Path) -> Broker:
    if name == "redis":
        return open_broker(f"{REDIS_URL}?prefix=emailq-bench-{uuid.uuid4().hex}")
    sync = "normal" if name == "sqlite-normal" else "full"
    return open_broker(f"sqlite:///{tmp / (name + '.db')}?synchronous={sync}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per measurement")
    parser.add_argument("--backends", default="sqlite,sqlite-normal,redis")
    args = parser.parse_args()
    print(f"{args.n} messages per measurement, batches of {BATCH}, {len(PAYLOAD)} B payloads\n")
    print(f"{'backend':<14} {'operation':<15} {'emailq msg/s':>13} {'bare engine/s':>14}  ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            with open_backend(name, Path(tmp)) as broker:
                ours = measure(broker, args.n)
            if name == "redis":
                ceiling = redis_ceiling(args.n)
            else:
                ceiling = sqlite_ceiling(Path(tmp) / f"{name}-ceiling.db", args.n)
            for operation, value in ours.items():
                peer = ceiling.get(operation)
                shown = f"{peer:>14,.0f}  {value / peer:.2f}" if peer else f"{'':>14}"
                print(f"{name:<14} {operation:<15} {value:>13,.0f} {shown}")
            verdict = "meets" if ours["full cycle"] >= TARGETS[name] else "BELOW"
            print(f"{'':<14} target full cycle >= {TARGETS[name]:,}/s: {verdict}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
