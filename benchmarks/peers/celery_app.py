"""The Celery peer: one task per email, built with EmailMessage and sent with smtplib.

    celery -A peers.celery_app worker -Q critical,celery --pool prefork -c 2 ...
    python -m peers.celery_app enqueue N            prints {"seconds": ...}
    python -m peers.celery_app critical N TAG       prints {"queued_at": ...}

(from benchmarks/). ``critical`` queues N ceremony changes on the dedicated ``critical``
queue, Message-IDs ``<TAG-i@bench.example>``, and prints when it started (``time.time()``).
The worker consumes that queue first: kombu's Redis transport then polls its queues in the
order given (``queue_order_strategy: priority``) instead of round robin, Celery's way to
prefer a queue on Redis without a second worker.

Configured by the environment benchmarks/e2e.py sets: ``BENCH_REDIS_URL`` (broker and
completion counter), ``BENCH_SMTP`` (host:port of the sink), ``BENCH_COUNTER`` (key).
What a typical application does: no result backend (fire and forget), JSON arguments, one
SMTP connection per pool process reused across tasks and reopened after an error.

Resilience, as emailq has its own: a task whose send or count meets a transient error
(SMTP, socket, Redis) is retried with backoff (Celery's ``autoretry_for``) instead of being
dropped; with early acks a dropped task is gone for good, and the benchmark, waiting for
every email, would see a drain that stops short ("stuck at 1,885/3,000"). Every Redis socket
has a timeout, the broker's too: without one a read that never returns hangs a process
silently (Celery issues #2464 and #2906: workers stuck in ``recvfrom`` after a fast batch of
a few thousand small tasks; their workaround is ``socket_timeout``).
"""

from __future__ import annotations

import json
import os
import smtplib
import sys
import time
from email.message import EmailMessage

import redis
from celery import Celery

from peers.workload import build_message, critical_fields, invitation

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SMTP_HOST, _, SMTP_PORT = os.environ.get("BENCH_SMTP", "127.0.0.1:2525").rpartition(":")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:done")
CRITICAL_QUEUE = "critical"
REDIS_TIMEOUTS = {"socket_timeout": 10, "socket_connect_timeout": 5}  # > BRPOP's 1 s
TRANSIENT = (smtplib.SMTPException, OSError, redis.RedisError)

app = Celery("peers", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,  # nobody reads an email task's return value
    broker_connection_retry_on_startup=True,  # the default; said so, Celery 5 does not warn
    broker_transport_options={
        "queue_order_strategy": "priority",  # -Q order: the critical queue first
        **REDIS_TIMEOUTS,
    },
)


class Mailer:
    """One SMTP connection per pool process, reused across tasks, reopened after an error."""

    def __init__(self) -> None:
        self.smtp: smtplib.SMTP | None = None  # opened on first use, after the fork

    def send(self, message: EmailMessage) -> None:
        try:
            self._open().send_message(message)
        except (smtplib.SMTPServerDisconnected, OSError):
            self.close()  # the connection broke: send once more on a fresh one
            self._open().send_message(message)

    def _open(self) -> smtplib.SMTP:
        if self.smtp is None:
            self.smtp = smtplib.SMTP(SMTP_HOST, int(SMTP_PORT), timeout=30)
        return self.smtp

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None


mailer = Mailer()
counter = redis.Redis.from_url(REDIS_URL, **REDIS_TIMEOUTS)  # reconnects after the fork


@app.task(
    name="send_invitation",
    autoretry_for=TRANSIENT,
    retry_backoff=1,  # 1 s, 2 s, 4 s, ... (jittered), up to 10 retries
    retry_backoff_max=30,
    max_retries=10,
)
def send_invitation(fields: dict[str, str]) -> None:
    mailer.send(build_message(fields))
    counter.incr(COUNTER)  # how the benchmark sees completion


def enqueue(n: int) -> float:
    """Queue n invitations the way a bulk sender would: one task each, one producer."""
    work = [invitation(i) for i in range(n)]
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for fields in work:
            send_invitation.apply_async((fields,), producer=producer)
    return time.perf_counter() - started


def enqueue_critical(n: int, tag: str) -> float:
    """Queue n ceremony changes on the critical queue at once; when that started."""
    work = [critical_fields(i, tag) for i in range(n)]
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()  # connected before the clock starts
        queued_at = time.time()
        for fields in work:
            send_invitation.apply_async((fields,), queue=CRITICAL_QUEUE, producer=producer)
    return queued_at


if __name__ == "__main__":
    if sys.argv[1:2] == ["enqueue"]:
        print(json.dumps({"seconds": enqueue(int(sys.argv[2]))}))
    elif sys.argv[1:2] == ["critical"]:
        print(json.dumps({"queued_at": enqueue_critical(int(sys.argv[2]), sys.argv[3])}))
    else:
        sys.exit("usage: python -m peers.celery_app enqueue N | critical N TAG")
