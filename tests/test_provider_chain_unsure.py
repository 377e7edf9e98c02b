"""A send that may have gone out (a timeout after DATA) is sent again through the same
provider before its message may move: the copy then reaches the server that may already
have it (which can drop it by its Message-ID), never a second provider that surely sends
it again. Real SMTP sinks; the primary answers the first DATA of each message only after
the client has given up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from emailq.deployment import Deployment
from emailq.providers.base import Accepted, Rendered, SendResult, Transient
from emailq.sink import SinkHandler, SmtpSink
from faults import copies

TIMEOUT_S = 1  # the client's; the primary answers the first DATA twice as late


class AnswersLate(SinkHandler):
    """Takes every message, but answers the first DATA of each only after ``delay``; with
    ``down_after_first`` it then closes shop (421 to every MAIL), as a relay going down."""

    def __init__(self, delay: float, down_after_first: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.down_after_first = down_after_first
        self.down = False
        self.mails = 0
        self.answered_late: set[str] = set()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:  # fmt: skip
        self.mails += 1
        if self.down:
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)  # taken: it went out
        message_id = self.deliveries[-1].message_id
        if message_id not in self.answered_late:
            self.answered_late.add(message_id)
            self.down = self.down_after_first
            await asyncio.sleep(self.delay)
        return reply


def rendered(n: int) -> list[Rendered]:
    return [
        Rendered(
            f"m{i}",
            "planner@weddings.example",
            (f"guest{i}@example.org",),
            f"X-Emailq-Id: m{i}\r\nSubject: Table {i}\r\n\r\nNow table {i}.\r\n".encode(),
            idempotency_key=f"table-{i}",
        )
        for i in range(n)
    ]


def send_through_chain(tmp_path: Path, ports: tuple[int, int], n: int, **provider: Any
                       ) -> list[SendResult]:  # fmt: skip
    urls = ",".join(f"smtp://127.0.0.1:{port}?pool=2&timeout={TIMEOUT_S}" for port in ports)
    settings = {"url": urls, "check_interval_s": 30, "failback_s": 600, **provider}
    with Deployment.from_url(f"sqlite:///{tmp_path}/queue.db", provider=settings) as d:

        async def run() -> list[SendResult]:
            chain = d.open_provider()
            try:
                return await chain.send_batch(rendered(n))
            finally:
                await chain.close()

        return asyncio.run(run())


def test_an_unsure_send_is_sent_again_through_the_same_provider_not_the_next(
    tmp_path: Path,
) -> None:
    late = AnswersLate(delay=2 * TIMEOUT_S)
    with SmtpSink(handler=late) as primary, SmtpSink() as secondary:
        results = send_through_chain(tmp_path, (primary.port, secondary.port), 3)
        assert all(isinstance(result, Accepted) for result in results), results
        assert copies(primary) == {"m0": 2, "m1": 2, "m2": 2}  # the copy went where it may dedupe
        assert secondary.count == 0


def test_it_moves_on_only_when_that_provider_turns_out_to_be_down(tmp_path: Path) -> None:
    late = AnswersLate(delay=2 * TIMEOUT_S, down_after_first=True)
    with SmtpSink(handler=late) as primary, SmtpSink() as secondary:
        [result] = send_through_chain(tmp_path, (primary.port, secondary.port), 1)
        assert isinstance(result, Accepted), result
        assert late.mails == 2  # asked the primary again first: it answered 421
        assert copies(primary) == {"m0": 1} and copies(secondary) == {"m0": 1}


def test_without_a_retry_on_the_same_provider_an_unsure_send_never_moves_at_once(
    tmp_path: Path,
) -> None:
    late = AnswersLate(delay=2 * TIMEOUT_S)
    with SmtpSink(handler=late) as primary, SmtpSink() as secondary:
        [result] = send_through_chain(tmp_path, (primary.port, secondary.port), 1,
                                      unsure_retries=0)  # fmt: skip
        assert isinstance(result, Transient) and result.unsure, result  # back to the queue
        assert copies(primary) == {"m0": 1} and secondary.count == 0
