"""What the hot broker paths cost, for two code trees side by side: enqueue and lease+complete.

    .venv/bin/python benchmarks/hot_scripts.py --trees OLD/src,src [--n 20000] [--rounds 3]
                                               [--backends redis,sqlite-normal]

Each round runs every tree once per backend, in turn (so drift on a shared machine hits
each alike), in a child process importing ``emailq`` from that tree. Batches of 100
messages with 1.5 KB payloads, spread over 20 tenants and the five lanes. Redis runs as a
private ``redis-server`` per measurement, so its CPU seconds (where the Lua scripts run) are
ours alone: printed per 1,000 messages beside messages/s. Medians and ranges over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers.probes import private_redis, redis_server_pid

CHILD = """
import json, os, sys, time
from emailq.broker import NewMessage, open_broker
from emailq.lanes import LANE_ORDER
url, n, redis_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def server_cpu():
    if not redis_pid:
        return 0.0
    fields = open(f"/proc/{redis_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
payload = os.urandom(1536)
work = [[NewMessage(payload, lane=LANE_ORDER[(b + i) % 5], tenant=f"t{(b + i) % 20}")
         for i in range(100)] for b in range(0, n, 100)]
broker = open_broker(url)
figures = {}
cpu, server, started = time.process_time(), server_cpu(), time.perf_counter()
for batch in work:
    broker.enqueue_many(batch)
figures["enqueue"] = (n / (time.perf_counter() - started), time.process_time() - cpu,
                      server_cpu() - server)
cpu, server, started = time.process_time(), server_cpu(), time.perf_counter()
while jobs := broker.lease("bench", 100, 60):
    broker.complete(jobs)
figures["lease+complete"] = (n / (time.perf_counter() - started), time.process_time() - cpu,
                             server_cpu() - server)
broker.close()
print(json.dumps(figures))
"""


def run(tree: str, backend: str, n: int) -> dict[str, list[float]]:
    env = os.environ | {"PYTHONPATH": str(Path(tree).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "redis":
            with private_redis() as url:
                pid = redis_server_pid(url)
                command = [sys.executable, "-c", CHILD, f"{url}?prefix=hot", str(n), str(pid)]
                out = subprocess.run(command, env=env, check=True, capture_output=True)
        else:
            url = f"sqlite:///{tmp}/hot.db?synchronous=normal"
            out = subprocess.run([sys.executable, "-c", CHILD, url, str(n), "0"], env=env,
                                 check=True, capture_output=True)  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="comma-separated src directories")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="redis,sqlite-normal")
    args = parser.parse_args()
    trees, backends = args.trees.split(","), args.backends.split(",")
    results: dict[tuple[str, str, str], list[list[float]]] = {}
    for round_ in range(args.rounds):
        for backend in backends:
            for tree in trees if round_ % 2 == 0 else trees[::-1]:
                for operation, figures in run(tree, backend, args.n).items():
                    results.setdefault((backend, operation, tree), []).append(figures)
        print(f"round {round_ + 1} done", flush=True)
    print(f"\n{args.n} messages, 20 tenants, 5 lanes; medians (ranges) of {args.rounds} rounds")
    print(f"{'backend':<14} {'operation':<15} {'tree':<28} {'msg/s':>20} {'client CPU ms/1k':>18}"
          f" {'redis CPU ms/1k':>17}")  # fmt: skip
    for (backend, operation, tree), rows in results.items():
        rates = [r[0] for r in rows]
        client = statistics.median(r[1] for r in rows) * 1e6 / args.n
        server = statistics.median(r[2] for r in rows) * 1e6 / args.n
        spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f})"
        print(f"{backend:<14} {operation:<15} {tree[-28:]:<28} {spread:>20} {client:>18.1f}"
              f" {server:>17.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
