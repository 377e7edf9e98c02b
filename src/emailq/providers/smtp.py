"""SMTP delivery over a small pool of persistent aiosmtplib connections.

Each pooled connection sends one message at a time; a batch is spread over the pool. A
dropped connection is reopened on its next message. SMTP replies map to results by their
code: 4xx and connection errors are transient, 5xx permanent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from emailq.providers.base import Accepted, Permanent, Provider, Rendered, SendResult, Transient


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    pool_size: int = 4
    timeout: float = 30.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    start_tls: bool | None = None  # None: upgrade when the server offers it
    use_tls: bool = False  # implicit TLS (port 465)


class SmtpProvider(Provider):
    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._created = 0

    async def send_batch(self, batch: Sequence[Rendered]) -> list[SendResult]:
        return list(await asyncio.gather(*(self._send_one(m) for m in batch)))

    async def _send_one(self, message: Rendered) -> SendResult:
        client = await self._checkout()
        try:
            if not client.is_connected:
                await self._open(client)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # A refused login or a dead server says nothing about this message: never final.
            client.close()
            self._idle.put_nowait(client)
            return Transient(f"connect/login: {type(error).__name__}: {error}")
        try:
            refused, reply = await client.sendmail(
                message.mail_from, list(message.recipients), message.data
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            return _classify_refusals([(e.code, e.message) for e in error.recipients])
        except aiosmtplib.SMTPResponseException as error:
            await _reset(client)
            return _from_code(error.code, error.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()  # reconnect on the next message
            return Transient(f"connection: {type(error).__name__}: {error}")
        finally:
            self._idle.put_nowait(client)
        # With some recipients refused but not all, the message still went out to the rest.
        return Accepted(reply if not refused else f"{reply} (refused: {len(refused)})")

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        await client.connect()
        if self.settings.username and self.settings.password:
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
