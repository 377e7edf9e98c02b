"""What one webhook event costs ``emailq webhooks``: CPU seconds per 1,000 events, events/s.

    .venv/bin/python benchmarks/webhook_cost.py [--n 20000] [--backend redis] [--rounds 3]
        [--tree base=/tmp/emailq-base/src]  # interleave with another tree's emailq
        [--profile]                         # in-process, cProfile of the dispatcher+sender

No mail is sent: the broker's own calls settle ``--n`` messages as sent (as workers do),
which writes ``--n`` ``email.sent`` audit events, with an ``emailq webhooks`` process
already running and idle beside a receiver process (emailq_loadtest/webhooks.py: keep-alive,
every signature verified) subscribed to every event. Printed per run: the webhook
process's CPU from the first event to the last arrival, per 1,000 events, the Redis
server's CPU over the same span (its share of the cost, on the same cores as the mail), and
events/s (first settle → last arrival). With ``--tree NAME=SRC`` the runs rotate between
this tree's emailq and those (``PYTHONPATH``), so before/after share the machine's drift.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from emailq.broker import Action, Broker, NewMessage, Outcome
from emailq.deployment import Deployment
from emailq.message import parse_email
from emailq_loadtest.webhooks import WebhookLoad, register
from webhook_receiver import cpu_s

REDIS_URL = os.environ.get("EMAILQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
CHUNK = 500  # messages enqueued, leased and settled per broker call


def broker_url(backend: str, tmp: Path) -> str:
    if backend == "redis":
        return f"{REDIS_URL}?prefix=emailq-whcost-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp / 'queue.db'}"


def settle_as_sent(broker: Broker, n: int, batch_id: str | None = None) -> None:
    """``n`` messages queued, leased and settled as sent: ``n`` email.sent events."""
    email = {"from": "planner@weddings.example", "to": "guest@example.org",
             "subject": "You are invited", "text": "x" * 400}  # fmt: skip
    payload = parse_email(email).to_payload()
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        broker.enqueue_many([NewMessage(payload, batch_id=batch_id)] * count)
        jobs = broker.lease("cost", count, 60)
        broker.settle([Outcome(job, Action.COMPLETE) for job in jobs])


def redis_cpu_s() -> float:
    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def one_run(backend: str, n: int, src: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-whcost-") as tmp:
        url = broker_url(backend, Path(tmp))
        deployment = Deployment.from_url(url)
        env = {"PYTHONPATH": src} if src else None  # the webhook process's emailq only
        load = WebhookLoad(deployment, url, "default", Path(tmp) / "hooks.log", env=env)
        try:
            time.sleep(3)  # started, imported, idle
            load.check()
            pid = load.pids["webhooks"]
            cpu0, redis0, t0 = cpu_s(pid), redis_cpu_s(), time.monotonic()
            settle_as_sent(deployment.broker, n)
            settled_s = time.monotonic() - t0
            if not load.wait_for_sent(n, 60 + n / 50):
                raise SystemExit(f"only {load.receiver.received.count('email.sent')} of {n}")
            wall = time.monotonic() - t0
            cpu, redis_cpu = cpu_s(pid) - cpu0, redis_cpu_s() - redis0
            figures = load.figures(n)
        finally:
            load.stop()
            deployment.broker.purge()
            deployment.close()
    return {
        "cpu_per_1k": cpu / n * 1000, "redis_per_1k": redis_cpu / n * 1000,
        "events_per_s": n / wall, "settle_s": settled_s, "dup": figures["duplicates"],
        "bad": figures["bad_signatures"], "lag_p50_ms": figures["sent_lag_ms"]["p50"],
        "lag_p99_ms": figures["sent_lag_ms"]["p99"],
    }  # fmt: skip


def profile(backend: str, n: int) -> None:
    """The dispatcher and sender in this process under cProfile, the receiver apart."""
    from emailq.webhooks import service
    from emailq.webhooks.signing import new_secret
    from emailq_loadtest.webhooks import EventReceiver

    with tempfile.TemporaryDirectory(prefix="bench-whcost-") as tmp:
        url = broker_url(backend, Path(tmp))
        deployment = Deployment.from_url(url, webhooks={"allow_private_urls": True})
        secret = new_secret()
        receiver = EventReceiver(secret)
        register(deployment, "default", receiver.url, secret)
        settle_as_sent(deployment.broker, n)

        async def main() -> float:
            stop = asyncio.Event()
            settings = deployment.settings.webhooks
            task = asyncio.create_task(
                service.run(deployment.broker, deployment.webhooks, settings, stop)
            )
            started = time.process_time()
            while receiver.received.count("email.sent") < n:
                await asyncio.sleep(0.5)
            used = time.process_time() - started
            stop.set()
            await task
            return used

        async def inline(func, /, *args, **kwargs):  # threads' work where cProfile sees it
            return func(*args, **kwargs)

        asyncio.to_thread = inline  # type: ignore[assignment]
        profiler = cProfile.Profile()
        try:
            used = profiler.runcall(asyncio.run, main())
        finally:
            receiver.stop()
            deployment.broker.purge()
            deployment.close()
    print(f"{n:,} events in process: {used:.2f} CPU s, {used / n * 1000:.2f} s per 1,000")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="email.sent events per run")
    parser.add_argument("--backend", default="redis", choices=("redis", "sqlite"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tree", action="append", default=[], metavar="NAME=SRC",
        help="another emailq src tree, run interleaved under NAME (repeatable)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile, in-process")
    args = parser.parse_args()
    if args.profile:
        profile(args.backend, args.n)
        return 0
    modes: dict[str, str | None] = {"this": None}
    modes |= dict(tree.split("=", 1) for tree in args.tree)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    print(f"{args.n:,} email.sent events per run, {args.backend} broker", flush=True)
    for round_ in range(args.rounds):
        shift = round_ % len(modes)
        order = list(modes)[shift:] + list(modes)[:shift]
        for mode in order:
            run = one_run(args.backend, args.n, modes[mode])
            runs[mode].append(run)
            print(f"{mode:<5} webhooks CPU {run['cpu_per_1k']:.2f} s/1k events, redis "
                  f"{run['redis_per_1k']:.2f} s/1k, {run['events_per_s']:,.0f} events/s "
                  f"(settled in {run['settle_s']:.1f} s), lag p50 {run['lag_p50_ms']:,.0f} ms "
                  f"p99 {run['lag_p99_ms']:,.0f} ms, {run['dup']} dup, {run['bad']} bad sig",
                  flush=True)  # fmt: skip
    print()
    for mode, done in runs.items():
        parts = []
        for key, label in (("cpu_per_1k", "CPU s/1k"), ("redis_per_1k", "redis s/1k"),
                           ("events_per_s", "events/s"), ("lag_p99_ms", "lag p99 ms")):  # fmt: skip
            values = [run[key] for run in done]
            parts.append(f"{label} {statistics.median(values):,.2f} "
                         f"[{min(values):,.2f}–{max(values):,.2f}]")  # fmt: skip
        print(f"{mode}: median [range] over {len(done)}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
