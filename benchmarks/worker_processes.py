"""How many worker processes add throughput on this machine? (the autoscaler's useful max)

Fills a fresh queue with N emails, then drains it with `emailq run -n P` for each P into
Postfix's `smtp-sink` (C, so the sink takes little of the CPU the workers need) and prints
emails/min per pool size, measured from the first email sent to the last (start-up left
out). Usage: benchmarks/worker_processes.py [--broker sqlite|redis] [--messages 20000]
[--pools 1,2,3,4]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from emailq.broker import NewMessage, State, open_broker
from emailq.message import parse_email
from peers.harness import smtp_sink

REDIS = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def drain_rate(url: str, payloads: list[bytes], processes: int, smtp_port: int) -> float:
    with open_broker(url) as broker:
        broker.purge()
        for start in range(0, len(payloads), 1000):
            broker.enqueue_many([NewMessage(p) for p in payloads[start : start + 1000]])
        provider = f"smtp://127.0.0.1:{smtp_port}?pool=8"
        command = [sys.executable, "-m", "emailq", "run", "-n", str(processes),
                   "--broker-url", url, "--provider-url", provider]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
        with subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) as run:
            first: tuple[float, int] | None = None
            give_up = time.monotonic() + 600
            try:
                while (sent := broker.stats().count(State.SENT)) < len(payloads):
                    if time.monotonic() > give_up or run.poll() is not None:
                        sys.exit(f"{processes} worker(s) did not drain the queue: {sent} sent")
                    if first is None and sent:
                        first = (time.monotonic(), sent)
                    time.sleep(0.05)
            finally:
                run.send_signal(signal.SIGTERM)
                run.wait(60)
        assert first is not None
        return (len(payloads) - first[1]) / (time.monotonic() - first[0]) * 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pools", default="1,2,3,4")
    args = parser.parse_args()
    payloads = [
        parse_email({"from": "planner@weddings.example", "to": f"guest{i}@example.org",
                     "subject": f"Invitation {i}", "text": "You are invited.\n" * 60}).to_payload()
        for i in range(args.messages)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, smtp_sink() as port:
        url = f"sqlite:///{tmp}/q.db" if args.broker == "sqlite" else (
            f"{REDIS}?prefix=bench-{uuid.uuid4().hex[:8]}")  # fmt: skip
        try:
            what = f"{args.messages:,} emails of ~1.5 KB into smtp-sink"
            print(f"{args.broker}, {what}, {os.cpu_count()} cores")
            for processes in (int(p) for p in args.pools.split(",")):
                rate = drain_rate(url, payloads, processes, port)
                print(f"  {processes} worker process(es): {rate:>9,.0f} emails/min")
        finally:
            with open_broker(url) as broker:
                broker.purge()


if __name__ == "__main__":
    main()
