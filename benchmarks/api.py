"""Intake API throughput and latency: `emailq serve` (one process) under open-loop load.

    .venv/bin/python benchmarks/api.py [--broker-url URL] [--rates 250,500,1000,1500,2000]
                                       [--seconds 10] [--batches 40]
    .venv/bin/python benchmarks/api.py --scenario flood [--flood-limit 50] [--seconds 10]
                                       [--rounds 5]

1. Single-email POSTs at fixed arrival rates. Open loop: each request has a scheduled
   send time and its latency is measured from that time, so a stalled server shows up as
   latency instead of quietly lowering the offered rate (coordinated omission).
2. 500-guest batch POSTs back to back on 4 connections: emails accepted per second, with
   one template for every batch and with a new template per batch.
3. ``--scenario flood`` (benchmarks/flood.py): one tenant at ten times its intake rate,
   another at a steady 200/s; the steady tenant's p99 with and without the flood.

The load generator is plain asyncio over raw keep-alive sockets with pre-built requests,
so it costs far less CPU than the server it measures; both share this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid

from emailq.deployment import Deployment
from emailq.sink import free_port

PEER_REDIS = "redis://127.0.0.1:6379/12"  # the Celery peer's broker, emptied after the run
DEFAULT_BROKER = f"redis://127.0.0.1:6379/14?prefix=emailq-bench-api-{uuid.uuid4().hex[:8]}"
EMAIL = {"from": "planner@weddings.example", "subject": "Ceremony moved to 16:30",
         "text": "Dear guest,\n\nThe ceremony now starts at 16:30.\n" * 12,
         "wedding": {"wedding_id": "w1", "ceremony_at": "2030-06-01T16:00:00+02:00",
                     "kind": "wedding_day_update"}}  # fmt: skip


def request_bytes(path: str, body: bytes, secret: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def send_open_loop(
    port: int, bodies: list[bytes], rate: float, start: float
) -> list[tuple[float, float, int]]:
    """(scheduled offset s, latency s, status) per request: each request is released at its
    scheduled time from ``start`` (open loop) over 64 keep-alive connections."""
    loop = asyncio.get_running_loop()
    schedule: asyncio.Queue[int] = asyncio.Queue()
    results: list[tuple[float, float, int]] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (index := await schedule.get()) >= 0:
            writer.write(bodies[index])
            status = await read_response(reader)
            offset = index / rate
            results.append((offset, loop.time() - (start + offset), status))
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(64)]
    for index in range(len(bodies)):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        schedule.put_nowait(index)
    for _ in workers:
        schedule.put_nowait(-1)
    await asyncio.gather(*workers)
    return results


async def open_loop(port: int, secret: str, rate: float, seconds: float) -> dict[str, float]:
    """Send at ``rate`` requests/s for ``seconds``; latency from each scheduled time."""
    bodies = [
        request_bytes("/v1/emails", json.dumps(EMAIL | {"to": f"g{i}@example.org"}).encode(),
                      secret)
        for i in range(int(rate * seconds))
    ]  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    results = await send_open_loop(port, bodies, rate, start)
    elapsed = loop.time() - start
    latencies = sorted(latency for _, latency, _ in results)
    return {
        "offered": rate, "achieved": len(latencies) / elapsed,
        "failures": sum(status != 202 for _, _, status in results),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }  # fmt: skip


async def batches(
    port: int, secret: str, count: int, fresh_templates: bool, guests: int = 500
) -> float:
    """Every batch has guests never seen before, so no address check is answered from cache.

    The server keeps compiled templates; ``fresh_templates`` gives each batch its own, so
    each pays the compile (one invitation design reused for many weddings is the common
    case, a new design per list the worst)."""
    template = EMAIL | {"subject": "Dear {{ name }}", "text": "Hello {{ name }}!\n" * 40}
    template["wedding"] = dict(EMAIL["wedding"], kind="invitation")  # type: ignore[call-overload]
    payloads = [
        request_bytes("/v1/emails/batch", json.dumps({
            "template": template | ({"subject": f"Dear {{{{ name }}}} ({b})"}
                                    if fresh_templates else {}),
            "recipients": [{"to": f"guest{b}-{i}@example{i % 9}.org",
                            "variables": {"name": f"G{i}"}} for i in range(guests)],
        }).encode(), secret)
        for b in range(count)
    ]  # fmt: skip

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while payloads:
            writer.write(payloads.pop())
            status = await read_response(reader)
            if status != 202:
                raise RuntimeError(f"batch answered {status}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(4)))
    return count * guests / (time.perf_counter() - started)


def start_server(
    command: list[str], port: int, cwd: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(command, cwd=cwd, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"{command[2]} did not start")


def measure(port: int, secret: str, args: argparse.Namespace) -> dict[str, float]:
    """Print and return one server's figures: single sends per rate, then batches."""
    results: dict[str, float] = {}
    achieved: list[float] = []
    print(f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-202':>8}")
    for rate in (float(r) for r in args.rates.split(",")):
        r = asyncio.run(open_loop(port, secret, rate, args.seconds))
        print(f"{r['offered']:>10.0f} {r['achieved']:>11.0f} {r['p50_ms']:>8.1f}"
              f" {r['p99_ms']:>8.1f} {r['failures']:>8.0f}")  # fmt: skip
        results[f"p99 ms at {rate:.0f}/s"] = r["p99_ms"]
        achieved.append(r["achieved"])
    results["single sends/s, most achieved"] = max(achieved)
    for fresh, how in ((False, "one template"), (True, "a new template each")):
        rate = asyncio.run(batches(port, secret, args.batches, fresh))
        print(f"500-guest batches, {how}: {rate:,.0f} emails/s accepted")
        results[f"batch emails/s, {how}"] = rate
    return results


def run_emailq(args: argparse.Namespace) -> dict[str, float]:
    with Deployment.from_url(args.broker_url) as deployment:
        _, secret = deployment.keys.create("bench")
    port = free_port()
    command = [sys.executable, "-m", "emailq", "serve", "--broker-url", args.broker_url,
               "--port", str(port), "--workers", str(args.workers)]  # fmt: skip
    server = start_server(command, port)
    try:
        print(f"== emailq serve ({args.workers} process(es)) on {args.broker_url.split('?')[0]}")
        return measure(port, secret, args)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        with Deployment.from_url(args.broker_url) as deployment:
            deployment.broker.purge()


def run_celery_peer(args: argparse.Namespace) -> dict[str, float]:
    import redis

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "peers.celery_intake:app", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
               "--no-access-log"]  # fmt: skip
    env = os.environ | {"BENCH_REDIS_URL": PEER_REDIS}
    server = start_server(command, port, cwd=os.path.dirname(os.path.abspath(__file__)), env=env)
    try:
        print("\n== peer: FastAPI + Celery (apply_async per email), uvicorn, one process")
        return measure(port, "unused", args)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        peer_redis = redis.Redis.from_url(PEER_REDIS)
        peer_redis.delete("celery", *peer_redis.keys("_kombu.binding.*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER)
    parser.add_argument("--rates", default="250,500,1000,1500,2000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1, help="emailq server processes")
    parser.add_argument("--peer", choices=["celery", "none"], default="celery")
    parser.add_argument("--scenario", choices=["throughput", "flood"], default="throughput")
    parser.add_argument("--flood-limit", type=float, default=50, help="the flooder's emails/s")
    parser.add_argument("--rounds", type=int, default=5, help="flood: rounds of three phases")
    parser.add_argument(
        "--flood-server",
        choices=["shared", "own"],
        default="shared",
        help="flood: the flooder sends to the steady tenant's API, or to an"
        " API process of its own (the bound of process isolation)",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0,
        help="flood: the API's sys.setswitchinterval (0: Python's 5 ms)",
    )
    args = parser.parse_args()
    if args.scenario == "flood":
        from flood import run_flood

        return run_flood(args)
    figures = {"emailq": run_emailq(args)}
    if args.peer == "celery":
        if importlib.util.find_spec("celery") is None:
            print("\nthe Celery peer needs the bench extra: .venv/bin/pip install -e '.[bench]'")
        else:
            figures["celery peer"] = run_celery_peer(args)
    print(f"\n{'':34}" + "".join(f"{name:>14}" for name in figures))
    for measure_name in figures["emailq"]:
        print(f"{measure_name:34}"
              + "".join(f"{figures[n].get(measure_name, 0):>14,.1f}" for n in figures))  # fmt: skip
    print("targets: >= 1,500 single emails/s with p99 < 50 ms at 1,000 req/s;"
          " >= 15,000 emails/s through the batch endpoint")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
