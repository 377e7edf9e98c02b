"""SMTP delivery over a small pool of persistent aiosmtplib connections.

Each pooled connection sends one message at a time; a batch is spread over the pool. A
dropped connection is reopened on its next message. SMTP replies map to results by their
code: 4xx and connection errors are transient, 5xx permanent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from emailq.providers.base import (
    Accepted,
    Permanent,
    Provider,
    Rendered,
    SendGate,
    SendResult,
    Transient,
    Withheld,
)

log = logging.getLogger(__name__)
DEFAULT_POOL = 8  # SMTP connections per provider (each worker process opens two providers)


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


class SmtpProvider(Provider):
    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.concurrency = settings.pool_size
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._created = 0

    async def _send(self, batch: Sequence[Rendered], gate: SendGate) -> list[SendResult]:
        async def one(index: int, message: Rendered) -> SendResult:
            try:
                result = await self._send_one(message, gate)
            except Exception as error:  # a bug strikes this message, not its siblings
                log.exception("sending message %s failed", message.message_id)
                result = Transient(f"unexpected {_describe(error)}", unexpected=True)
            gate.done(index, result)  # settled as it completes, not when the batch does
            return result

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(batch))))

    async def _send_one(self, message: Rendered, gate: SendGate) -> SendResult:
        client = await self._checkout()
        try:
            if not client.is_connected:
                try:
                    await self._open(client)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    # A dead server or a refused login says nothing about this message.
                    client.close()
                    return Transient(f"connect/login: {_describe(error)}", provider_down=True)
            # The fence reaches the wire: the last moment before MAIL FROM.
            if not await gate.may_send(message.message_id):
                return Withheld("the lease may have lapsed before MAIL FROM")
            return await self._transaction(client, message)
        finally:
            self._idle.put_nowait(client)

    async def _transaction(self, client: aiosmtplib.SMTP, message: Rendered) -> SendResult:
        try:
            refused, reply = await client.sendmail(
                message.mail_from, list(message.recipients), message.data
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            return _classify_refusals([(e.code, e.message) for e in error.recipients])
        except aiosmtplib.SMTPResponseException as error:
            if error.code == 421:  # the server is closing the channel: it, not the message
                client.close()
                return Transient(f"421 {error.message}", provider_down=True)
            await _reset(client)
            return _from_code(error.code, error.message)
        except aiosmtplib.SMTPTimeoutError as error:
            # After DATA the server may have taken the message: retried, but as "unsure".
            client.close()
            return Transient(f"timeout: {_describe(error)}", unsure=True)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()  # reconnect on the next message
            return Transient(f"connection: {_describe(error)}", unsure=True)
        except Exception as error:  # an address or message our checks let through
            client.close()  # the transaction is half done: start the next one afresh
            return Transient(f"unexpected {_describe(error)}", unexpected=True)
        if refused:  # some recipients refused, the rest accepted: the message went out
            refusals = "; ".join(f"{addr}: {code}" for addr, (code, _) in sorted(refused.items()))
            return Accepted(f"{reply} (refused {len(refused)}: {refusals})")
        return Accepted(reply)

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        await client.connect()
        if self.settings.username and self.settings.password:
            encrypted = client.get_transport_info("sslobject") is not None
            if not encrypted and not self.settings.allow_plaintext_auth:
                client.close()
                raise PlaintextAuthRefused(
                    "the server offers no TLS: not sending the password in clear"
                    " (add ?auth=plaintext to the provider URL to allow it)"
                )
            await client.login(self.settings.username, self.settings.password)

    async def _checkout(self) -> aiosmtplib.SMTP:
        if self._idle.empty() and self._created < self.settings.pool_size:
            self._created += 1
            return aiosmtplib.SMTP(
                hostname=self.settings.host,
                port=self.settings.port,
                timeout=self.settings.timeout,
                use_tls=self.settings.use_tls,
                start_tls=self.settings.start_tls,
            )
        return await self._idle.get()

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


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _from_code(code: int, text: str) -> SendResult:
    reason = f"{code} {text}".strip()
    return Permanent(reason) if 500 <= code < 600 else Transient(reason)


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
