"""SMTP delivery over a pool of persistent aiosmtplib connections.

Each pooled connection sends one message at a time; a batch is spread over the pool, whose
size is fixed by ``?pool=N`` or else follows the relay's measured reply time
(providers.smtp_pool). A dropped connection is reopened on its next message. SMTP replies
map to results by their code: 4xx and connection errors are transient, 5xx permanent.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
from emailq.providers.smtp_pool import Connections, PoolSizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    # Connections per provider and worker process (a URL's ?pool=N); None: as many as the
    # relay's reply time says help (providers.smtp_pool). A worker's express provider
    # has a pool of its own.
    pool_size: int | None = None
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
        size = settings.pool_size
        sizer = PoolSizer() if size is None else PoolSizer.of_size(size)
        self.pool = Connections(self._client, sizer)
        self.concurrency = self.pool.sizer.ceiling  # the unsettled window: at most this many
        self._queued = 0  # messages of the batches in hand that no connection has taken yet

    def size_like(self, other: Provider) -> None:
        """Share ``other``'s sizer: this pool opens up to the size ``other`` has measured
        to help, and its own reply times count too (both pools without ?pool= only)."""
        if isinstance(other, SmtpProvider) and not (
            self.pool.sizer.fixed or other.pool.sizer.fixed
        ):
            self.pool.sizer = other.pool.sizer

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        """One task per connection the pool may open, each taking the batch's next message
        when it has a connection (not one task per message waiting for a connection)."""
        results: list[SendResult] = [Withheld("not reached")] * len(batch)
        waiting = deque(enumerate(batch))
        down: list[Transient] = []  # the server is down: the rest of the batch waits for it
        self._queued += len(batch)

        async def connection() -> None:
            client: aiosmtplib.SMTP | None = await self.pool.checkout()
            try:
                while waiting and client is not None:
                    index, message = waiting.popleft()
                    self._queued -= 1
                    result = down[0] if down else await self._send_one(client, message, gate)
                    if isinstance(result, _TurnedAway):  # the pool was too big, not this message
                        waiting.appendleft((index, message))
                        self._queued += 1
                        self.pool.retire(client)
                        client = None
                        client = await self.pool.checkout()
                        continue
                    if isinstance(result, Transient) and result.provider_down and not down:
                        down.append(result)
                    results[index] = result
                    gate.done(index, result)  # settled as it completes, not when the batch does
            finally:
                if client is not None:
                    self.pool.give_back(client)

        try:
            await asyncio.gather(
                *(connection() for _ in range(min(len(batch), self.pool.sizer.ceiling)))
            )
        finally:
            self._queued -= len(waiting)
        return results

    async def _send_one(
        self, client: aiosmtplib.SMTP, message: Rendered, gate: SendGate
    ) -> SendResult | _TurnedAway:
        try:
            if not client.is_connected:
                error = await self._connect(client)
                if error is not None:
                    if _turned_away(error) and (working := await self.pool.others_work(client)):
                        self._too_big(error, working)
                        return _TURNED_AWAY
                    # A dead server or a refused login says nothing about this message.
                    return Transient(
                        f"connect/login: {_describe(error)}",
                        provider_down=True,
                        credentials_refused=_credentials_refused(error),
                    )
            # The fence reaches the wire: the last moment before MAIL FROM.
            if not await gate.may_send(message.message_id):
                return Withheld("the lease may have lapsed before MAIL FROM")
            if not self._queued:
                return await self._transaction(client, message)
            # Others wait for a connection: this reply time tells the pool's sizer whether
            # more connections would carry more.
            epoch, started = self.pool.sizer.epoch, time.perf_counter()
            result = await self._transaction(client, message)
            reply_s = time.perf_counter() - started
            if isinstance(result, Accepted) and self.pool.sizer.measured(epoch, reply_s):
                self.pool.grown()
            return result
        except Exception as error:  # a bug strikes this message, not its siblings
            log.exception("sending message %s failed", message.message_id)
            client.close()  # whatever state the connection is in, start the next one afresh
            return Transient(f"unexpected {_describe(error)}", unexpected=True)

    async def _connect(self, client: aiosmtplib.SMTP) -> Exception | None:
        """Open ``client`` (what went wrong, or None), telling the pool how it went."""
        self.pool.opening(client)
        try:
            await self._open(client)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()
            return error
        finally:
            self.pool.opened(client, ok=client.is_connected)
        return None

    def _too_big(self, error: BaseException, working: int) -> None:
        before = self.pool.sizer.limit
        self.pool.sizer.shrink_to(working)
        if self.pool.sizer.limit < before:
            log.warning(
                "%s:%d turned a connection away (%s) while %d worked: this pool keeps at most %d",
                self.settings.host, self.settings.port, _describe(error), working,
                self.pool.sizer.limit,
            )  # fmt: skip

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
        for client in self.pool.drain_idle():
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


class _TurnedAway:
    """The relay refused a new connection while others of the pool work (_send_one)."""


_TURNED_AWAY = _TurnedAway()


def _turned_away(error: BaseException) -> bool:
    """A 421 greeting ("too many connections") or a refused connect: what a relay says to a
    client holding more connections than it allows."""
    if isinstance(error, aiosmtplib.SMTPConnectResponseError):
        return error.code == 421
    if isinstance(error, aiosmtplib.SMTPTimeoutError):  # slow, not refusing
        return False
    # Refused, reset, or closed before the greeting (aiosmtplib wraps each in SMTPConnectError).
    return isinstance(error, aiosmtplib.SMTPConnectError) and isinstance(
        error.__cause__, ConnectionError
    )


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
