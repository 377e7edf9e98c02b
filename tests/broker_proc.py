"""A separate process that uses a broker, for the multi-process tests.

    python broker_proc.py lease-all URL OUT BATCH LEASE_S      lease until the queue is empty
    python broker_proc.py lease-and-hang URL OUT BATCH LEASE_S lease one batch, then hang
    python broker_proc.py enqueue-keys URL OUT N GO_FILE        enqueue keys k0..kN-1 at GO_FILE

OUT receives one JSON document when the process has done its part.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from emailq.broker import NewMessage, open_broker


def lease_all(url: str, out: Path, batch: int, lease_s: float) -> None:
    worker = f"proc-{os.getpid()}"
    taken: list[str] = []
    with open_broker(url) as broker:
        while jobs := broker.lease(worker, batch, lease_s):
            taken += [job.id for job in jobs]
    out.write_text(json.dumps(taken))


def lease_and_hang(url: str, out: Path, batch: int, lease_s: float) -> None:
    with open_broker(url) as broker:
        jobs = broker.lease(f"proc-{os.getpid()}", batch, lease_s)
        out.write_text(json.dumps([job.id for job in jobs]))
        time.sleep(3600)  # the test kills us mid-batch


def enqueue_keys(url: str, out: Path, n: int, go_file: Path) -> None:
    keys = [f"k{i}" for i in range(n)]
    random.shuffle(keys)  # every process claims the keys in a different order
    out.with_suffix(".ready").touch()
    deadline = time.monotonic() + 30
    while not go_file.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    ids: dict[str, str] = {}
    with open_broker(url) as broker:
        for start in range(0, n, 20):
            chunk = keys[start : start + 20]
            got = broker.enqueue_many(
                [NewMessage(key.encode(), idempotency_key=key) for key in chunk]
            )
            ids.update(zip(chunk, got, strict=True))
    out.write_text(json.dumps(ids))


def main(argv: list[str]) -> None:
    command, url, out = argv[0], argv[1], Path(argv[2])
    if command == "lease-all":
        lease_all(url, out, int(argv[3]), float(argv[4]))
    elif command == "lease-and-hang":
        lease_and_hang(url, out, int(argv[3]), float(argv[4]))
    elif command == "enqueue-keys":
        enqueue_keys(url, out, int(argv[3]), Path(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
