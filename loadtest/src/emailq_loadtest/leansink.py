"""A lean SMTP sink for stress runs: just enough SMTP to take mail and note its id.

The built-in sink (aiosmtpd) costs about 0.5 ms of CPU a message here, as much as an emailq
worker spends delivering it: on a 2-core machine the load test would measure its own sink.
This one is an ``asyncio.Protocol`` on uvloop that answers EHLO/HELO, MAIL, RCPT, DATA, RSET,
NOOP and QUIT, finds the ``X-Emailq-Id`` header in each message and replies ``250``; it
offers no extension but 8BITMIME and SMTPUTF8, checks no address and keeps no message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import uvloop

from emailq.clock import now
from emailq.sink import message_id_of

Record = Callable[[str, float], None]
_END = b"\r\n.\r\n"
_REPLIES = {
    b"EHLO": b"250-emailq loadtest sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
    b"HELO": b"250 emailq loadtest sink\r\n",
    b"MAIL": b"250 OK\r\n",
    b"RCPT": b"250 OK\r\n",
    b"RSET": b"250 OK\r\n",
    b"NOOP": b"250 OK\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"QUIT": b"221 Bye\r\n",
}


class LeanSmtp(asyncio.Protocol):
    def __init__(self, record: Record, delay: float = 0.0) -> None:
        self.record, self.delay = record, delay
        self.buffer = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"220 emailq loadtest sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport and (self._message() if self.in_data else self._command()):
            pass

    def _command(self) -> bool:
        assert self.transport
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        verb = bytes(self.buffer[:4]).upper()
        del self.buffer[: end + 2]
        self.transport.write(_REPLIES.get(verb, b"502 Command not implemented\r\n"))
        if verb == b"DATA":
            self.in_data = True
        elif verb == b"QUIT":
            self.transport.close()
            self.transport = None
        return True

    def _message(self) -> bool:
        assert self.transport
        if self.buffer.startswith(b".\r\n"):  # an empty message
            end, message = 0, b""
            del self.buffer[:3]
        else:
            end = self.buffer.find(_END)
            if end < 0:
                return False
            message = bytes(self.buffer[: end + 2])
            del self.buffer[: end + len(_END)]
        if self.delay:
            time.sleep(self.delay)  # blocks the whole sink, as an overloaded server would
        self.record(message_id_of(message), now())
        self.in_data = False
        self.transport.write(b"250 OK\r\n")
        return True


async def serve(
    port: int,
    delay: float,
    record: Record,
    on_ready: Callable[[], None],
    tick: Callable[[], bool],
    every: float,
) -> None:
    """Listen on ``port``; call ``tick`` every ``every`` seconds until it returns False."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LeanSmtp(record, delay), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    on_ready()
    while tick():
        await asyncio.sleep(every)
    server.close()


def run(
    port: int,
    delay: float,
    record: Record,
    on_ready: Callable[[], None],
    tick: Callable[[], bool],
    every: float,
) -> None:
    """:func:`serve` on uvloop."""
    uvloop.run(serve(port, delay, record, on_ready, tick, every))
