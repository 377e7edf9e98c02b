"""The flood scenario of ``benchmarks/api.py --scenario flood`` (issue 11): one tenant sends
at ten times its intake rate while another sends a steady 200 emails/s.

Prints the steady tenant's p99 alone and during the flood, their ratio (the goal: at most
1.10), and how long after the flood began its first 429 came (the goal: within 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from api import EMAIL, request_bytes, send_open_loop, start_server
from emailq.deployment import Deployment
from emailq.sink import free_port

STEADY_RATE = 200.0


def requests(secret: str, rate: float, seconds: float, tenant: str) -> list[bytes]:
    """Built before the clock starts: building them late would delay the first sends."""
    return [
        request_bytes("/v1/emails", json.dumps(EMAIL | {"to": f"{tenant}{i}@example.org"})
                      .encode(), secret)
        for i in range(int(rate * seconds))
    ]  # fmt: skip


def p99_ms(results: list[tuple[float, float, int]]) -> float:
    latencies = sorted(latency for _, latency, _ in results)
    return latencies[int(0.99 * (len(latencies) - 1))] * 1000


async def steady_alone(port: int, steady: list[bytes]) -> list[tuple[float, float, int]]:
    start = asyncio.get_running_loop().time() + 0.5
    return await send_open_loop(port, steady, STEADY_RATE, start)


async def steady_under_flood(
    port: int, steady: list[bytes], flood: list[bytes], flood_rate: float
) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
    start = asyncio.get_running_loop().time() + 0.5  # after both opened their connections
    return await asyncio.gather(
        send_open_loop(port, steady, STEADY_RATE, start),
        send_open_loop(port, flood, flood_rate, start),
    )


def run_flood(args: argparse.Namespace) -> int:
    limit = args.flood_limit
    with Deployment.from_url(args.broker_url) as deployment:
        secrets = {tenant: deployment.keys.create(tenant)[1] for tenant in ("steady", "flood")}
    port = free_port()
    command = [sys.executable, "-m", "emailq", "serve", "--broker-url", args.broker_url,
               "--port", str(port)]  # fmt: skip
    env = {"EMAILQ_API_TENANT_RATES": json.dumps({"flood": limit})}
    server = start_server(command, port, env=os.environ | env)
    try:
        print(f"== flood: {args.broker_url.split('?')[0]}; tenant 'flood' limited to {limit:g}/s"
              f" sends {10 * limit:g}/s, tenant 'steady' sends {STEADY_RATE:g}/s"
              f" ({args.seconds:g} s each)")  # fmt: skip
        seconds, flood_rate = args.seconds, 10 * limit
        warm_up = requests(secrets["steady"], STEADY_RATE, 2, "warm-up")
        asyncio.run(steady_alone(port, warm_up))
        steady_requests = requests(secrets["steady"], STEADY_RATE, seconds, "steady")
        alone = asyncio.run(steady_alone(port, steady_requests))
        flood_requests = requests(secrets["flood"], flood_rate, seconds, "flood")
        steady, flood = asyncio.run(
            steady_under_flood(port, steady_requests, flood_requests, flood_rate)
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        with Deployment.from_url(args.broker_url) as deployment:
            deployment.broker.purge()
    refused = sorted(offset + latency for offset, latency, status in flood if status == 429)
    other = [s for _, _, s in steady if s != 202] + [s for _, _, s in alone if s != 202]
    before, during = p99_ms(alone), p99_ms(steady)
    p50 = sorted(latency for _, latency, _ in steady)[len(steady) // 2] * 1000
    print(f"steady p50 during flood: {p50:8.1f} ms")
    print(f"steady p99 alone:        {before:8.1f} ms")
    print(f"steady p99 during flood: {during:8.1f} ms")
    print(f"ratio:                   {during / before:8.2f}  (goal <= 1.10)")
    first = f"{refused[0]:.2f} s" if refused else "never"
    print(f"first 429 after:         {first:>8}  (goal <= 1 s);"
          f" flood answered 202 x{sum(s == 202 for *_, s in flood)},"
          f" 429 x{len(refused)}; steady non-202: {len(other)}")  # fmt: skip
    return 0
