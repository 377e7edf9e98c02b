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

Where the time goes, per phase: CPU seconds and run-queue wait (schedstat) of each process
involved, the machine's CPU pressure (PSI) and the API's GC pauses. ``--flood-server own``
sends the flood to an API process of its own (same broker, same shared limit): the bound
of any split of the intake across processes; ``--workers N`` runs each API as N processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from api import EMAIL, request_bytes, send_open_loop, start_server
from emailq.deployment import Deployment
from emailq.sink import free_port
from peers.probes import cpu_seconds, gc_pauses, redis_server_pid, runqueue_wait_s

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
    processes, so both senders begin together. Sends back its results and the CPU seconds
    it spent sending them."""

    async def main() -> Results:
        loop_start = asyncio.get_running_loop().time() + (start - time.monotonic())
        return await send_open_loop(port, bodies, rate, loop_start)

    cpu, waited = time.process_time(), runqueue_wait_s(os.getpid())
    results = asyncio.run(main())
    out.send((results, time.process_time() - cpu, runqueue_wait_s(os.getpid()) - waited))
    out.close()


@dataclass
class Phase:
    """What one phase measured: both tenants' requests, and where the machine's CPU went."""

    mine: Results
    theirs: Results
    cpu_s: dict[str, float]  # process → CPU seconds in the phase
    wait_s: dict[str, float]  # process → seconds its threads waited for a core
    stall_s: float  # time some task waited for a core (/proc/pressure/cpu "some")
    seconds: float


def cpu_stall_s() -> float:
    """Seconds so far in which some runnable task waited for a core (Linux PSI), 0 if none."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return 0.0
    return int(line.rsplit("total=", 1)[1]) / 1e6


def phase(port: int, other_port: int, steady: list[bytes], other: list[bytes] | None,
          other_rate: float, servers: dict[str, int]) -> Phase:  # fmt: skip
    start = time.monotonic() + 0.8  # after the other process started and opened its sockets
    child = None
    if other:
        receive, send = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.Process(
            target=_other_sender, args=(other_port, other, other_rate, start, send)
        )
        child.start()

    async def main() -> Results:
        loop_start = asyncio.get_running_loop().time() + (start - time.monotonic())
        return await send_open_loop(port, steady, STEADY_RATE, loop_start)

    def usage() -> dict[str, tuple[float, float]]:  # (CPU s, s waiting for a core)
        return {name: (cpu_seconds(pid), runqueue_wait_s(pid)) for name, pid in servers.items()} | {
            "steady sender": (time.process_time(), runqueue_wait_s(os.getpid(), False))
        }  # this process without the flood sender it forked

    before, stall, began = usage(), cpu_stall_s(), time.monotonic()
    mine = asyncio.run(main())
    after = usage()
    theirs: Results = []
    spent = {name: after[name][0] - cpu for name, (cpu, _) in before.items()}
    waited = {name: after[name][1] - wait for name, (_, wait) in before.items()}
    spent["flood sender"] = waited["flood sender"] = 0.0
    if child is not None:
        theirs, spent["flood sender"], waited["flood sender"] = receive.recv()
        child.join(30)
    return Phase(mine, theirs, spent, waited, cpu_stall_s() - stall, time.monotonic() - began)


Servers = dict[str, tuple[int, subprocess.Popen[bytes]]]  # tenant → (port, API process)


def start_servers(args: argparse.Namespace, gc_log: Path) -> Servers:
    """The API the steady tenant sends to, and (``--flood-server own``) a second API process
    on its own port for the flooding tenant: refusals that cannot touch the steady tenant's
    process, the most any split of the intake across processes could give on this machine.
    Each runs under the GC probe (pauses of 1 ms or more are logged)."""
    env = os.environ | {"EMAILQ_API_TENANT_RATES": json.dumps({"flood": args.flood_limit}),
                        "EMAILQ_MONITOR_PUBLISH_S": "0"}  # fmt: skip
    if args.switch_interval_ms:
        env["EMAILQ_PROBE_SWITCH_INTERVAL_MS"] = str(args.switch_interval_ms)
    probe = str(Path(__file__).parent / "peers" / "serve_probe.py")
    servers = {}
    for name in ("steady", "flood") if args.flood_server == "own" else ("steady",):
        port = free_port()
        command = [sys.executable, probe, str(gc_log), "--", "serve",
                   "--broker-url", args.broker_url, "--port", str(port),
                   "--workers", str(args.workers)]  # fmt: skip
        servers[name] = (port, start_server(command, port, env=env))
    return servers


def run_flood(args: argparse.Namespace) -> int:
    limit, seconds = args.flood_limit, args.seconds
    with Deployment.from_url(args.broker_url) as deployment:
        secrets = {tenant: deployment.keys.create(tenant)[1] for tenant in ("steady", "flood")}
    gc_log = Path(tempfile.mkdtemp(prefix="flood-gc-")) / "gc.jsonl"
    servers = start_servers(args, gc_log)
    port = servers["steady"][0]
    other_port = servers.get("flood", servers["steady"])[0]
    pids = {f"API ({name})" if len(servers) > 1 else "API": proc.pid
            for name, (_, proc) in servers.items()}  # fmt: skip
    if args.broker_url.startswith("redis"):
        pids["redis-server"] = redis_server_pid(args.broker_url)
    print(
        f"== flood: {args.broker_url.split('?')[0]}; tenant 'flood' limited to {limit:g}/s,"
        f" tenant 'steady' at {STEADY_RATE:g}/s; {args.rounds} rounds of alone / at limit"
        f" ({limit:g}/s) / flood ({10 * limit:g}/s), {seconds:g} s each; the flooder sends to"
        f" {'its own API process' if len(servers) > 1 else 'the same API'}"
        f" ({args.workers} process(es) each)"
        + (f"; switch interval {args.switch_interval_ms:g} ms" if args.switch_interval_ms else ""),
        flush=True,
    )
    phases: dict[str, list[Phase]] = {"alone": [], "at limit": [], "flood": []}
    orders = [["alone", "at limit", "flood"], ["flood", "at limit", "alone"]]
    try:
        phase(port, other_port, requests(secrets["steady"], STEADY_RATE, 2, "warm-up"), None, 0,
              pids)  # fmt: skip
        for round_ in range(args.rounds):
            for name in orders[round_ % 2]:
                rate = {"alone": 0.0, "at limit": limit, "flood": 10 * limit}[name]
                tag = f"r{round_}{name[0]}"
                steady = requests(secrets["steady"], STEADY_RATE, seconds, f"steady-{tag}-")
                other = requests(secrets["flood"], rate, seconds, f"flood-{tag}-") if rate else None
                began = time.time()
                measured = phase(port, other_port, steady, other, rate, pids)
                pauses = gc_pauses(gc_log, began, time.time())
                phases[name].append(measured)
                print(f"round {round_ + 1} {name:<8}: " + describe(measured, name, pauses),
                      flush=True)  # fmt: skip
    finally:
        for _, server in servers.values():
            server.send_signal(signal.SIGTERM)
        for _, server in servers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
        with Deployment.from_url(args.broker_url) as deployment:
            deployment.broker.purge()
    report(phases)
    return 0


def first_429(measured: Phase) -> float:
    refused = [offset + latency for offset, latency, s in measured.theirs if s == 429]
    return min(refused, default=float("inf"))


def describe(measured: Phase, name: str, pauses: list[tuple[int, float]]) -> str:
    statuses = [s for *_, s in measured.mine + measured.theirs]
    odd = sum(s != 202 for *_, s in measured.mine)
    p50 = sorted(x[1] for x in measured.mine)[len(measured.mine) // 2] * 1000
    cpu = ", ".join(f"{k} {v:.2f} ({measured.wait_s[k] * 1000:.0f} ms waiting)"
                    for k, v in measured.cpu_s.items())  # fmt: skip
    return (f"steady p99 {p99_ms(measured.mine):7.1f} ms, p50 {p50:5.1f} ms;"
            f" {statuses.count(202)} x 202 + {statuses.count(429)} x 429;"
            f" CPU s: {cpu}; machine: a task waiting for a core"
            f" {measured.stall_s / measured.seconds:.0%} of the time;"
            f" GC pauses >= 1 ms: {len(pauses)}"
            + (f" (longest {max(ms for _, ms in pauses):.1f} ms)" if pauses else "")
            + (f"; first 429 after {first_429(measured):.2f} s" if name == "flood" else "")
            + (f"; steady non-202: {odd}" if odd else ""))  # fmt: skip


def _spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):5.2f} (range {min(values):.2f}–{max(values):.2f},"
            f" {len(values)} rounds)")  # fmt: skip


def report(phases: dict[str, list[Phase]]) -> None:
    print()
    p99s = {name: [p99_ms(m.mine) for m in measured] for name, measured in phases.items()}
    for name, values in p99s.items():
        print(f"steady p99 {name:<8}: median {statistics.median(values):7.1f} ms"
              f" (range {min(values):.1f}–{max(values):.1f})")  # fmt: skip
    alone, at_limit, flood = p99s["alone"], p99s["at limit"], p99s["flood"]
    print("ratio flood / alone:    " + _spread([f / a for f, a in zip(flood, alone, strict=True)])
          + "  (goal <= 1.10)")  # fmt: skip
    print("ratio flood / at limit: "
          + _spread([f / a for f, a in zip(flood, at_limit, strict=True)]))  # fmt: skip
    print("CPU seconds per second of each phase, medians (where the 2 cores went):")
    for name, measured in phases.items():
        per_s = {k: statistics.median(m.cpu_s[k] / m.seconds for m in measured)
                 for k in measured[0].cpu_s}  # fmt: skip
        wait = {k: statistics.median(m.wait_s[k] / m.seconds for m in measured)
                for k in measured[0].wait_s}  # fmt: skip
        stall = statistics.median(m.stall_s / m.seconds for m in measured)
        total = sum(per_s.values())
        print(f"  {name:<8}: " + ", ".join(f"{k} {v:.2f} (waiting {wait[k] * 1000:.0f} ms/s)"
                                           for k, v in per_s.items())
              + f"; total {total:.2f}; machine: a task waiting for a core {stall:.0%}")  # fmt: skip

    # CPU per request: alone gives the cost of a 202; flood minus at limit, of the 429s.
    def api_cpu(m: Phase) -> float:
        return sum(v for k, v in m.cpu_s.items() if k.startswith("API"))

    def count(name: str, status: int) -> int:
        return sum([s for *_, s in m.mine + m.theirs].count(status) for m in phases[name])

    per_202 = sum(map(api_cpu, phases["alone"])) / max(1, count("alone", 202))
    extra = sum(map(api_cpu, phases["flood"])) - sum(map(api_cpu, phases["at limit"]))
    refused = count("flood", 429) - count("at limit", 429)
    per_429 = extra / refused if refused > 0 else float("nan")
    print(f"API CPU: {per_202 * 1000:.3f} ms per 202, {per_429 * 1000:.3f} ms per 429"
          f" ({per_429 / per_202:.2f} of a 202)")  # fmt: skip
    firsts = [first_429(m) for m in phases["flood"]]
    print(f"first 429 after: median {statistics.median(firsts):.2f} s, worst"
          f" {max(firsts):.2f} s  (goal <= 1 s)")  # fmt: skip
