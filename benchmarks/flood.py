"""The flood scenario of ``benchmarks/api.py --scenario flood`` (issue 11): one tenant sends
at ten times its intake rate while another sends a steady 200 emails/s.

Each round runs three phases of ``--seconds``, in an order that turns every round (so
drift on a shared machine hits every phase alike):

- ``alone``: the steady tenant only;
- ``at limit``: the other tenant sends at its own limit beside it (all 202s: the share
  it is entitled to, which costs the server like any intake);
- ``flood``: the other tenant sends at ten times its limit (the same 202s, plus 429s).

The flooding tenant's sender runs in a process of its own, so its 429s do not share an
event loop with the steady tenant's timing. Per phase: the steady tenant's p99 (and the
server's CPU per request, steadier than any latency on a loaded machine); at the end the
median and range over the rounds of p99(flood) / p99(alone) and p99(flood) / p99(at
limit) (the goal: at most 1.10), the CPU one 429 costs against one 202, and how long
after each flood began its first 429 came (the goal: within 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from multiprocessing.connection import Connection

from api import EMAIL, request_bytes, send_open_loop, start_server
from emailq.deployment import Deployment
from emailq.sink import free_port
from peers.probes import cpu_seconds

STEADY_RATE = 200.0
Results = list[tuple[float, float, int]]  # (scheduled offset s, latency s, status)


def requests(secret: str, rate: float, seconds: float, tenant: str) -> list[bytes]:
    """Built before the clock starts: building them late would delay the first sends."""
    return [
        request_bytes("/v1/emails", json.dumps(EMAIL | {"to": f"{tenant}{i}@example.org"})
                      .encode(), secret)
        for i in range(int(rate * seconds))
    ]  # fmt: skip


def p99_ms(results: Results) -> float:
    latencies = sorted(latency for _, latency, _ in results)
    return latencies[int(0.99 * (len(latencies) - 1))] * 1000


def _other_sender(port: int, bodies: list[bytes], rate: float, start: float,
                  out: Connection) -> None:  # fmt: skip
    """The other tenant, in its own process: ``start`` is time.monotonic(), shared by all
    processes, so both senders begin together."""

    async def main() -> Results:
        loop_start = asyncio.get_running_loop().time() + (start - time.monotonic())
        return await send_open_loop(port, bodies, rate, loop_start)

    out.send(asyncio.run(main()))
    out.close()


def phase(port: int, steady: list[bytes], other: list[bytes] | None,
          other_rate: float) -> tuple[Results, Results]:  # fmt: skip
    start = time.monotonic() + 0.8  # after the other process started and opened its sockets
    child = None
    if other:
        receive, send = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.Process(target=_other_sender,
                                        args=(port, other, other_rate, start, send))  # fmt: skip
        child.start()

    async def main() -> Results:
        loop_start = asyncio.get_running_loop().time() + (start - time.monotonic())
        return await send_open_loop(port, steady, STEADY_RATE, loop_start)

    mine = asyncio.run(main())
    theirs: Results = []
    if child is not None:
        theirs = receive.recv()
        child.join(30)
    return mine, theirs


def run_flood(args: argparse.Namespace) -> int:
    limit, seconds = args.flood_limit, args.seconds
    with Deployment.from_url(args.broker_url) as deployment:
        secrets = {tenant: deployment.keys.create(tenant)[1] for tenant in ("steady", "flood")}
    port = free_port()
    command = [sys.executable, "-m", "emailq", "serve", "--broker-url", args.broker_url,
               "--port", str(port)]  # fmt: skip
    env = {"EMAILQ_API_TENANT_RATES": json.dumps({"flood": limit}),
           "EMAILQ_MONITOR_PUBLISH_S": "0"}  # fmt: skip
    server = start_server(command, port, env=os.environ | env)
    print(
        f"== flood: {args.broker_url.split('?')[0]}; tenant 'flood' limited to {limit:g}/s,"
        f" tenant 'steady' at {STEADY_RATE:g}/s; {args.rounds} rounds of alone / at limit"
        f" ({limit:g}/s) / flood ({10 * limit:g}/s), {seconds:g} s each",
        flush=True,
    )
    p99s: dict[str, list[float]] = {"alone": [], "at limit": [], "flood": []}
    cpu: dict[str, list[tuple[float, int, int]]] = {k: [] for k in p99s}  # (s, 202s, 429s)
    first_429: list[float] = []
    orders = [["alone", "at limit", "flood"], ["flood", "at limit", "alone"]]
    try:
        phase(port, requests(secrets["steady"], STEADY_RATE, 2, "warm-up"), None, 0)
        for round_ in range(args.rounds):
            for name in orders[round_ % 2]:
                rate = {"alone": 0.0, "at limit": limit, "flood": 10 * limit}[name]
                tag = f"r{round_}{name[0]}"
                steady = requests(secrets["steady"], STEADY_RATE, seconds, f"steady-{tag}-")
                other = requests(secrets["flood"], rate, seconds, f"flood-{tag}-") if rate else None
                before = cpu_seconds(server.pid)
                mine, theirs = phase(port, steady, other, rate)
                spent = cpu_seconds(server.pid) - before
                statuses = [s for *_, s in mine + theirs]
                cpu[name].append((spent, statuses.count(202), statuses.count(429)))
                p99s[name].append(p99_ms(mine))
                refused = sorted(offset + latency for offset, latency, s in theirs if s == 429)
                if name == "flood":
                    first_429.append(refused[0] if refused else float("inf"))
                odd = sum(s != 202 for *_, s in mine)
                print(f"round {round_ + 1} {name:<8}: steady p99 {p99s[name][-1]:7.1f} ms,"
                      f" p50 {sorted(x[1] for x in mine)[len(mine) // 2] * 1000:6.1f} ms;"
                      f" server CPU {spent:5.2f} s for {statuses.count(202)} x 202 +"
                      f" {statuses.count(429)} x 429"
                      + (f"; first 429 after {first_429[-1]:.2f} s" if name == "flood" else "")
                      + (f"; steady non-202: {odd}" if odd else ""), flush=True)  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        with Deployment.from_url(args.broker_url) as deployment:
            deployment.broker.purge()
    report(p99s, cpu, first_429)
    return 0


def _spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):5.2f} (range {min(values):.2f}–{max(values):.2f},"
            f" {len(values)} rounds)")  # fmt: skip


def report(p99s: dict[str, list[float]], cpu: dict[str, list[tuple[float, int, int]]],
           first_429: list[float]) -> None:  # fmt: skip
    print()
    for name, values in p99s.items():
        print(f"steady p99 {name:<8}: median {statistics.median(values):7.1f} ms"
              f" (range {min(values):.1f}–{max(values):.1f})")  # fmt: skip
    alone, at_limit, flood = p99s["alone"], p99s["at limit"], p99s["flood"]
    print("ratio flood / alone:    " + _spread([f / a for f, a in zip(flood, alone, strict=True)])
          + "  (goal <= 1.10)")  # fmt: skip
    print("ratio flood / at limit: "
          + _spread([f / a for f, a in zip(flood, at_limit, strict=True)]))  # fmt: skip
    # CPU per request: alone gives the cost of a 202; flood minus at limit, of the 429s.
    per_202 = sum(c for c, _, _ in cpu["alone"]) / max(1, sum(n for _, n, _ in cpu["alone"]))
    extra = sum(c for c, _, _ in cpu["flood"]) - sum(c for c, _, _ in cpu["at limit"])
    refused = sum(n for _, _, n in cpu["flood"]) - sum(n for _, _, n in cpu["at limit"])
    per_429 = extra / refused if refused > 0 else float("nan")
    print(f"server CPU: {per_202 * 1000:.3f} ms per 202, {per_429 * 1000:.3f} ms per 429"
          f" ({per_429 / per_202:.2f} of a 202)")  # fmt: skip
    print(f"first 429 after: median {statistics.median(first_429):.2f} s, worst"
          f" {max(first_429):.2f} s  (goal <= 1 s)")  # fmt: skip
