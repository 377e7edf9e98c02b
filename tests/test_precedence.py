"""Critical mail first for the worker's CPU and connections, not only in the queue: with
both batch loops busy on bulk mail, a ceremony change to 50 people queued mid-run reaches
the server before any bulk message leased after it (issue 17). An ordering, not a timing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from emailq.broker import Job, NewMessage, open_broker
from emailq.broker.calls import BrokerCalls
from emailq.lanes import Lane
from emailq.message import parse_email
from emailq.providers.smtp import SmtpProvider, SmtpSettings
from emailq.sink import SmtpSink
from emailq.worker import Worker, WorkerSettings
from faults import SlowSink, fill


def test_critical_mail_queued_mid_run_goes_before_bulk_leased_after_it(
    broker_url: str,
) -> None:
    leases: list[tuple[float, list[Job]]] = []  # (when the call began, what it returned)
    change = 50  # critical messages, a few batches of the express loop and the batch loops
    slow = SlowSink(delay=0.005)  # the whole server takes 5 ms a message: a queue forms
    with open_broker(broker_url) as broker, SmtpSink(handler=slow) as sink:
        make_calls = broker.calls

        def recording_calls() -> BrokerCalls:
            """The worker's own broker calls, their leases recorded."""
            calls = make_calls()
            lease = calls.lease

            async def recording_lease(*args: Any, **kwargs: Any) -> list[Job]:
                began = time.monotonic()
                jobs = await lease(*args, **kwargs)
                leases.append((began, list(jobs)))
                return jobs

            setattr(calls, "lease", recording_lease)  # noqa: B010 - instruments the real call
            return calls

        setattr(broker, "calls", recording_calls)  # noqa: B010
        fill(broker, 400)
        ceremony = parse_email({
            "from": "planner@weddings.example", "to": "officiant@chapel.example",
            "subject": "Ceremony moved to 15:30", "text": "Same chapel, new time.",
        }).to_payload()  # fmt: skip
        settings = WorkerSettings(batch_size=20, concurrency=2, lease_s=30)
        provider = SmtpProvider(SmtpSettings(port=sink.port, pool_size=4))
        express = SmtpProvider(SmtpSettings(port=sink.port, pool_size=2))
        worker = Worker(broker, provider, settings, express_provider=express)

        async def scenario() -> tuple[list[str], float]:
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            while sink.count < 40:  # both loops busy on bulk
                await asyncio.sleep(0.005)
            queued_at = time.monotonic()
            critical = await asyncio.to_thread(
                broker.enqueue_many,
                [NewMessage(ceremony, lane=Lane.CRITICAL, validated=True)] * change,
            )
            while sink.count < 200:
                await asyncio.sleep(0.005)
            stop.set()
            await running
            await provider.close()
            await express.close()
            return critical, queued_at

        critical, queued_at = asyncio.run(scenario())
        order = [d.message_id for d in list(sink.deliveries)]
    assert set(critical) <= set(order), "critical mail was not delivered"
    later_bulk = {
        job.id
        for began, jobs in leases
        if began > queued_at
        for job in jobs
        if job.lane is not Lane.CRITICAL
    }
    assert later_bulk, "no bulk was leased after the critical mail: the run shows nothing"
    last_critical = max(order.index(i) for i in critical)
    sent_before = [i for i in order[:last_critical] if i in later_bulk]
    assert sent_before == [], f"{len(sent_before)} bulk messages leased later went first"
