"""What data protection costs in delivery, and whether purge keeps up (issue 15).

    .venv/bin/python benchmarks/privacy.py [--n 20000] [--rounds 2] [--backend redis]
        [--purge-n 120000] [--retention 10]

Part 1: the same workload as benchmarks/e2e.py (~1.5 KB invitations, 2 `emailq worker`
processes, Postfix's smtp-sink) drained with the audit trail off and on, and payload sealing
off and on, the configurations interleaved round by round so drift hits each alike; prints
each one's drain rate (median of its rounds) and its cost against "plain".

Part 2: purge at full speed. ``--purge-n`` emails drain with a metadata retention of
``--retention`` seconds while this process runs ``purge_expired`` every 5 s (what every
worker does each minute); prints finished records on record, and delivered so far, every
5 s: the first stays flat while the second climbs. No figure is asserted.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from e2e import REDIS_URL, emailq_commands
from emailq.broker import State
from emailq.deployment import Deployment
from emailq.message import parse_email
from emailq.settings import Settings
from peers.harness import Workers, drain, smtp_sink
from peers.workload import invitation

KEY = "bench:" + base64.b64encode(os.urandom(32)).decode()
CONFIGS = {
    "plain": {"EMAILQ_PRIVACY_AUDIT": "false"},
    "audit": {"EMAILQ_PRIVACY_AUDIT": "true"},
    "sealed": {"EMAILQ_PRIVACY_AUDIT": "false", "EMAILQ_ENCRYPTION_KEYS": KEY},
}


def url_for(backend: str, tmp: Path, tag: str) -> str:
    if backend == "redis":
        return f"{REDIS_URL}?prefix=emailq-privacy-{tag}-{os.getpid()}"
    return f"sqlite:///{tmp / f'{tag}.db'}"


def settings_for(url: str, env: dict[str, str], retention: float | None = None) -> Settings:
    privacy = {"audit": env.get("EMAILQ_PRIVACY_AUDIT") == "true", "hash_secret": "bench"}
    broker: dict[str, object] = {"url": url}
    if retention:
        broker["retention_s"] = retention
    return Settings(broker=broker, privacy=privacy,
                    encryption_keys=env.get("EMAILQ_ENCRYPTION_KEYS"))  # fmt: skip


def enqueue(deployment: Deployment, n: int) -> None:
    """Intake as the API does it: validated, hashed (when audited), sealed (when on)."""
    now = datetime.now(UTC)
    for start in range(0, n, 1000):
        emails = [parse_email(invitation(i)) for i in range(start, min(n, start + 1000))]
        deployment.broker.enqueue_many([deployment.to_message(e, now) for e in emails])


def drain_rate(name: str, url: str, env: dict[str, str], n: int, port: int, tmp: Path) -> float:
    with Deployment(settings_for(url, env)) as deployment:
        try:
            enqueue(deployment, n)
            workers = Workers(name, tmp)
            try:
                workers.start(emailq_commands(url, port, 2, None), Path.cwd(), os.environ | env)
                timing = drain(workers, lambda: deployment.broker.stats().count(State.SENT), n)
                workers.stop()
            finally:
                workers.kill()
            return timing.per_minute
        finally:
            deployment.broker.purge()


def costs(args: argparse.Namespace, port: int, tmp: Path) -> None:
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_ in range(args.rounds):
        for name, env in CONFIGS.items():
            url = url_for(args.backend, tmp, f"{name}{round_}")
            rate = drain_rate(name, url, env, args.n, port, tmp)
            rates[name].append(rate)
            print(f"  round {round_ + 1} {name:<7} {rate:>10,.0f} emails/min", flush=True)
    plain = statistics.median(rates["plain"])
    print(f"\n{args.backend}, {args.n:,} emails per run, median of {args.rounds} rounds:")
    for name, values in rates.items():
        median = statistics.median(values)
        cost = (plain - median) / plain * 100
        print(f"  {name:<7} {median:>10,.0f} emails/min   cost {cost:+5.1f} %")


def purge_flat(args: argparse.Namespace, port: int, tmp: Path) -> None:
    env = CONFIGS["audit"]
    url = url_for(args.backend, tmp, "purge")
    with Deployment(settings_for(url, env, args.retention)) as deployment:
        broker = deployment.broker
        try:
            enqueue(deployment, args.purge_n)
            stop = threading.Event()

            def purge_every_5s() -> None:
                while not stop.wait(5):
                    broker.purge_expired()

            purger = threading.Thread(target=purge_every_5s, daemon=True)
            workers = Workers("purge", tmp)
            delivered, started = [0], time.monotonic()

            def report(count: int) -> None:
                if time.monotonic() - started >= 5 * len(delivered):
                    stats = broker.stats()
                    final = sum(stats.count(s) for s in (State.SENT, State.DEAD))
                    delivered.append(count)
                    print(f"  t={time.monotonic() - started:5.0f} s  delivered {count:>8,}"
                          f"  finished records on record {final:>7,}", flush=True)  # fmt: skip

            try:
                workers.start(emailq_commands(url, port, 2, None), Path.cwd(), os.environ | env)
                purger.start()
                # Delivered: what is no longer waiting (records purged leave the sent count).
                delivered_so_far = lambda: args.purge_n - broker.stats().backlog  # noqa: E731
                timing = drain(workers, delivered_so_far, args.purge_n, report)
                workers.stop()
            finally:
                stop.set()
                workers.kill()
            print(f"  drained {args.purge_n:,} at {timing.per_minute:,.0f} emails/min")
        finally:
            broker.purge()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="redis", choices=["redis", "sqlite"])
    parser.add_argument("--purge-n", type=int, default=120_000)
    parser.add_argument("--retention", type=float, default=10.0)
    parser.add_argument("--skip-costs", action="store_true")
    parser.add_argument("--skip-purge", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as tmp, smtp_sink() as port:
        if not args.skip_costs:
            print("audit trail and sealing, each against plain, interleaved:")
            costs(args, port, Path(tmp))
        if not args.skip_purge:
            print(f"\npurge at full speed, retention {args.retention:g} s:")
            purge_flat(args, port, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
