"""The arq peer: one job per email, built with EmailMessage and sent with aiosmtplib.

    python -m arq peers.arq_app.WorkerSettings          a worker process (from benchmarks/)
    python -m arq peers.arq_app.CriticalWorkerSettings  the critical queue's own worker
    python -m peers.arq_app enqueue N                   prints {"seconds": ...}
    python -m peers.arq_app critical N TAG              prints {"queued_at": ...}

arq has no priorities: a worker takes one queue's jobs in the order they are due, so
critical mail goes on a dedicated queue (``arq:critical``) with a worker of its own, arq's
way to keep it apart. ``critical`` queues N ceremony changes there at once, Message-IDs
``<TAG-i@bench.example>``, and prints when it started (``time.time()``).

Runs in its own environment (benchmarks/peers/requirements-arq.txt: arq pins redis<6).
Configured by the environment benchmarks/e2e.py sets: ``BENCH_REDIS_URL`` (queue and
completion counter), ``BENCH_SMTP`` (host:port of the sink), ``BENCH_COUNTER`` (key).
Each of the ``max_jobs`` job slots has its own SMTP connection, from a pool made at start-up,
reused across jobs and reopened after an error. arq's other settings are its defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from arq import create_pool
from arq.connections import RedisSettings

from peers.workload import build_message, critical_fields, invitation

REDIS_SETTINGS = RedisSettings.from_dsn(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
)
SMTP_HOST, _, SMTP_PORT = os.environ.get("BENCH_SMTP", "127.0.0.1:2525").rpartition(":")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:done")
MAX_JOBS = 8  # as many SMTP connections per process as emailq's pool=8
CRITICAL_QUEUE = "arq:critical"
ENQUEUE_CONCURRENCY = 100  # enqueue_job calls in flight; each one is a Redis transaction


async def startup(ctx: dict[str, Any]) -> None:
    # arq logs two INFO lines per job; Celery runs at -l WARNING and emailq logs nothing per
    # message, so arq logs warnings only too: otherwise logging would be part of its cost.
    logging.getLogger("arq").setLevel(logging.WARNING)
    pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for _ in range(MAX_JOBS):
        pool.put_nowait(aiosmtplib.SMTP(hostname=SMTP_HOST, port=int(SMTP_PORT), timeout=30))
    ctx["smtp"] = pool


async def shutdown(ctx: dict[str, Any]) -> None:
    pool: asyncio.Queue[aiosmtplib.SMTP] = ctx["smtp"]
    while not pool.empty():
        client = pool.get_nowait()
        if client.is_connected:
            client.close()


async def _send(client: aiosmtplib.SMTP, message: EmailMessage) -> None:
    try:
        if not client.is_connected:
            await client.connect()
        await client.send_message(message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError):
        client.close()  # the connection broke: send once more on a fresh one
        await client.connect()
        await client.send_message(message)


async def send_invitation(ctx: dict[str, Any], fields: dict[str, str]) -> None:
    message = build_message(fields)
    pool: asyncio.Queue[aiosmtplib.SMTP] = ctx["smtp"]
    client = await pool.get()
    try:
        await _send(client, message)
    finally:
        pool.put_nowait(client)
    await ctx["redis"].incr(COUNTER)  # how the benchmark sees completion


class WorkerSettings:
    functions = (send_invitation,)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS_SETTINGS
    max_jobs = MAX_JOBS


class CriticalWorkerSettings:  # arq reads a settings class's own attributes, not inherited
    functions = (send_invitation,)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS_SETTINGS
    max_jobs = MAX_JOBS
    queue_name = CRITICAL_QUEUE


async def enqueue(n: int) -> float:
    """Queue n invitations, one job each, ENQUEUE_CONCURRENCY calls at a time."""
    work = [invitation(i) for i in range(n)]
    redis = await create_pool(REDIS_SETTINGS)
    started = time.perf_counter()
    for start in range(0, n, ENQUEUE_CONCURRENCY):
        chunk = work[start : start + ENQUEUE_CONCURRENCY]
        await asyncio.gather(*(redis.enqueue_job("send_invitation", f) for f in chunk))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    return elapsed


async def enqueue_critical(n: int, tag: str) -> float:
    """Queue n ceremony changes on the critical queue at once; when that started."""
    work = [critical_fields(i, tag) for i in range(n)]
    redis = await create_pool(REDIS_SETTINGS)
    queued_at = time.time()
    await asyncio.gather(
        *(redis.enqueue_job("send_invitation", f, _queue_name=CRITICAL_QUEUE) for f in work)
    )
    await redis.aclose()
    return queued_at


if __name__ == "__main__":
    if sys.argv[1:2] == ["enqueue"]:
        print(json.dumps({"seconds": asyncio.run(enqueue(int(sys.argv[2])))}))
    elif sys.argv[1:2] == ["critical"]:
        queued_at = asyncio.run(enqueue_critical(int(sys.argv[2]), sys.argv[3]))
        print(json.dumps({"queued_at": queued_at}))
    else:
        sys.exit("usage: python -m peers.arq_app enqueue N | critical N TAG")
