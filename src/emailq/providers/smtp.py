"""SMTP delivery over a small pool of persistent aiosmtplib connections.

Each pooled connection sends one message at a time; a batch is spread over the pool. A
dropped connection is reopened on its next message. SMTP replies map to results by their
code: 4xx and connection errors are transient, 5xx permanent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from emailq.providers.base import (
    Accepted,
    HealthCheck,
    Permanent,
    Provider,
    Rendered,
    SendGate,
    SendResult,
    Transient,
    Withheld,
)

log = logging.getLogger(__name__)
# SMTP connections per provider and worker process; a worker's express provider opens its
# own as critical mail needs them (up to as many again). A relay 5 ms away (4 round trips
# an email) carries about 40,000/min on 2 workers × 8, 73,000 × 16, 123,000 × 32
# (benchmarks/e2e.py --relay-ms 5): a relay that far needs ?pool=32. 16 keeps 2 workers'
# bulk connections under Postfix's default of 50 per client.
DEFAULT_POOL = 16


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    pool_size: int = DEFAULT_POOL  # connections; a URL's ?pool= sets it
    timeout: float = 30.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    start_tls: bool | None = None  # None: upgrade when the server offers it
    use_tls: bool = False  # implicit TLS (port 465)
    # A password over a connection without TLS can be read by anyone on the path: refused
    # unless the operator asks for it (a relay on localhost, a test server).
    allow_plaintext_auth: bool = False
    # Certificates are always verified: against these CAs (PEM) instead of the system's,
    # and with a client certificate of our own where the relay asks for one.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class SmtpProvider(Provider):
    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.concurrency = settings.pool_size
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._created = 0

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        """One task per pooled connection, each taking the batch's next message when it is
        free (not one task per message waiting for a connection)."""
        results: list[SendResult] = [Withheld("not reached")] * len(batch)
        waiting = deque(enumerate(batch))
        down: list[Transient] = []  # the server is down: the rest of the batch waits for it

        async def connection() -> None:
            client = await self._checkout()
            try:
                while waiting:
                    index, message = waiting.popleft()
                    result = down[0] if down else await self._send_one(client, message, gate)
                    if isinstance(result, Transient) and result.provider_down and not down:
                        down.append(result)
                    results[index] = result
                    gate.done(index, result)  # settled as it completes, not when the batch does
            finally:
                self._idle.put_nowait(client)

        await asyncio.gather(
            *(connection() for _ in range(min(len(batch), self.settings.pool_size)))
        )
        return results

    async def _send_one(
        self, client: aiosmtplib.SMTP, message: Rendered, gate: SendGate
    ) -> SendResult:
        try:
            if not client.is_connected:
                try:
                    await self._open(client)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    # A dead server or a refused login says nothing about this message.
                    client.close()
                    return Transient(
                        f"connect/login: {_describe(error)}",
                        provider_down=True,
                        credentials_refused=_credentials_refused(error),
                    )
            # The fence reaches the wire: the last moment before MAIL FROM.
            if not await gate.may_send(message.message_id):
                return Withheld("the lease may have lapsed before MAIL FROM")
            return await self._transaction(client, message)
        except Exception as error:  # a bug strikes this message, not its siblings
            log.exception("sending message %s failed", message.message_id)
            client.close()  # whatever state the connection is in, start the next one afresh
            return Transient(f"unexpected {_describe(error)}", unexpected=True)

    async def _transaction(self, client: aiosmtplib.SMTP, message: Rendered) -> SendResult:
        """MAIL, RCPT for each recipient, DATA; the result says what became of each recipient.

        The addresses were checked to be plain ASCII local@domain when the message was
        rendered (mime.envelope), so they go on the command line as they are, without
        aiosmtplib's sendmail() parsing every one again on every send.
        """
        on_the_wire = False  # past the end of DATA the server may have taken the message
        try:
            # One timer for the whole transaction, not one per command (aiosmtplib's own
            # timeout wraps each reply in asyncio.wait_for: a tenth of a worker's CPU).
            async with asyncio.timeout(self.settings.timeout):
                size = [b"SIZE=%d" % len(message.data)] if client.supports_extension("size") else []
                reply = await client.execute_command(
                    b"MAIL", b"FROM:<" + message.mail_from.encode("ascii") + b">", *size,
                    timeout=None,
                )  # fmt: skip
                if reply.code != 250:
                    return await _refused(client, reply.code, reply.message)
                refusals: dict[str, tuple[int, str]] = {}
                for recipient in message.recipients:
                    reply = await client.execute_command(
                        b"RCPT", b"TO:<" + recipient.encode("ascii") + b">", timeout=None
                    )
                    if reply.code == 421:
                        return await _refused(client, reply.code, reply.message)
                    if reply.code not in (250, 251):
                        refusals[recipient] = (reply.code, reply.message)
                if len(refusals) == len(message.recipients):
                    await _reset(client)
                    return _classify_refusals(list(refusals.values()))
                on_the_wire = True
                reply = await client.data(message.data, timeout=None)
        except aiosmtplib.SMTPResponseException as error:  # DATA refused
            return await _refused(client, error.code, error.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()  # reconnect on the next message
            return Transient(f"connection: {_describe(error)}", unsure=on_the_wire)
        if refusals:
            return _partly_accepted(reply.message, refusals)
        return Accepted(reply.message)

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        await client.connect()
        if client.is_ehlo_or_helo_needed:  # connect() greets only to use STARTTLS
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        if self.settings.username and self.settings.password:
            encrypted = client.get_transport_info("ssl_object") is not None
            if not encrypted and not self.settings.allow_plaintext_auth:
                client.close()
                raise PlaintextAuthRefused(
                    "the server offers no TLS: not sending the password in clear"
                    " (add ?auth=plaintext to the provider URL to allow it)"
                )
            await client.login(self.settings.username, self.settings.password)

    async def check(self) -> HealthCheck:
        """Connect, EHLO (STARTTLS as configured), AUTH where configured, NOOP, QUIT: on a
        connection of its own, so the pool's connections are not disturbed."""
        client = self._client()
        try:
            await self._open(client)
            reply = await client.noop()
            if reply.code != 250:
                return HealthCheck(ok=False, reason=f"NOOP: {reply.code} {reply.message}")
            return HealthCheck(ok=True)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            return HealthCheck(
                ok=False, reason=_describe(error), credentials_refused=_credentials_refused(error)
            )
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()

    async def _checkout(self) -> aiosmtplib.SMTP:
        if self._idle.empty() and self._created < self.settings.pool_size:
            self._created += 1
            return self._client()
        return await self._idle.get()

    def _client(self) -> aiosmtplib.SMTP:
        settings = self.settings
        return aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            timeout=settings.timeout,
            use_tls=settings.use_tls,
            start_tls=settings.start_tls,
            cert_bundle=settings.ca_file,
            client_cert=settings.cert_file,
            client_key=settings.key_file,
        )

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
        self._created = 0


class PlaintextAuthRefused(aiosmtplib.SMTPException):
    """Credentials would have crossed the network unencrypted."""


def _credentials_refused(error: BaseException) -> bool:
    """535 and its kin: the server will not take our login (not a password-in-clear refusal
    of our own, which the operator fixes the same way, so it counts too)."""
    return isinstance(error, aiosmtplib.SMTPAuthenticationError | PlaintextAuthRefused)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _from_code(code: int, text: str) -> SendResult:
    reason = f"{code} {text}".strip()
    return Permanent(reason) if 500 <= code < 600 else Transient(reason)


async def _refused(client: aiosmtplib.SMTP, code: int, text: str) -> SendResult:
    if code == 421:  # the server is closing the channel: it, not the message
        client.close()
        return Transient(f"421 {text}", provider_down=True)
    await _reset(client)
    return _from_code(code, text)


def _partly_accepted(reply: str, refusals: dict[str, tuple[int, str]]) -> SendResult:
    """The server took the message for some recipients. Those refused for now (4xx) are
    tried again, alone; those refused for good (5xx) are reported, not retried."""
    detail = "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in refusals.items())
    later = tuple(rcpt for rcpt, (code, _) in refusals.items() if code < 500)
    if later:
        return Transient(f"refused for now by {len(later)} recipients: {detail}",
                         recipients=later)  # fmt: skip
    return Accepted(reply, refused=f"refused by {len(refusals)} recipients: {detail}")


def _classify_refusals(refusals: list[tuple[int, str]]) -> SendResult:
    """Every recipient refused: permanent only if every refusal was permanent."""
    reason = "; ".join(f"{code} {text}" for code, text in refusals)
    if all(500 <= code < 600 for code, _ in refusals):
        return Permanent(reason)
    return Transient(reason)


async def _reset(client: aiosmtplib.SMTP) -> None:
    """After a refused transaction, RSET so the connection can carry the next message."""
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
