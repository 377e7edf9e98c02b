"""The sender's HTTP/1.1 client (webhooks/poster.py) against a real server that answers in
each of the ways HTTP allows: keep-alive reuse, several POSTs in flight, chunked and sized
and unsized bodies, interim 1xx answers, HTTP/1.0, connections the server closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from emailq.webhooks.poster import Poster, PostFailed
from emailq.webhooks.ssrf import UrlRefused

pytestmark = pytest.mark.anyio

Reply = Callable[[int], bytes]  # request number → the bytes answered


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def serving(reply: Reply, close_after_each: bool = False) -> AsyncIterator[Server]:
    """Answers each request with ``reply(n)``; closes the connection after each if asked."""
    state = Server(0)
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                first, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers["content-length"]))
                state.requests.append((first, headers, body))
                answer = reply(len(state.requests))
                if answer:
                    writer.write(answer)
                    await writer.drain()
                if close_after_each or not answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def always(answer: bytes) -> Reply:
    return lambda n: answer


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_posts_reuse_one_connection_and_carry_the_request() -> None:
    poster = Poster(allow_private=True, timeout_s=10)
    async with serving(always(NO_CONTENT)) as server:
        for i in range(20):
            status = await poster.post(server.url("/hooks?x=1"), b'{"n":%d}' % i, {"a": "b"})
            assert status == 204
    await poster.aclose()
    assert server.connections == 1 and len(server.requests) == 20
    first, headers, body = server.requests[3]
    assert first == "POST /hooks?x=1 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}" and headers["a"] == "b"
    assert headers["content-type"] == "application/json" and body == b'{"n":3}'


async def test_several_posts_in_flight_each_on_a_connection_of_its_own() -> None:
    poster = Poster(allow_private=True, timeout_s=10)
    async with serving(always(NO_CONTENT)) as server:
        url = server.url()
        statuses = await asyncio.gather(*(poster.post(url, b"{}", {}) for _ in range(8)))
        assert statuses == [204] * 8 and server.connections == 8
        await asyncio.gather(*(poster.post(url, b"{}", {}) for _ in range(8)))
        assert server.connections == 8  # the same eight, kept alive
    await poster.aclose()


@pytest.mark.parametrize(
    ("answer", "status", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n", 200, True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
         202, True),
        (b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno", 500, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
        (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://10.0.0.1/\r\n"
         b"Content-Length: 0\r\n\r\n", 307, True),
    ],
)  # fmt: skip
async def test_each_kind_of_answer_is_read_to_its_end(
    answer: bytes, status: int, kept: bool
) -> None:
    poster = Poster(allow_private=True, timeout_s=10)
    async with serving(always(answer), close_after_each=not kept) as server:
        assert [await poster.post(server.url(), b"{}", {}) for _ in range(3)] == [status] * 3
    await poster.aclose()
    assert server.connections == (1 if kept else 3)


async def test_a_body_that_runs_until_close_and_a_connection_closed_while_idle() -> None:
    poster = Poster(allow_private=True, timeout_s=10)
    unsized = b"HTTP/1.1 200 OK\r\n\r\nno length: the body runs until the server closes"
    async with serving(always(unsized), close_after_each=True) as server:
        assert [await poster.post(server.url(), b"{}", {}) for _ in range(2)] == [200, 200]
        assert server.connections == 2
    sized = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with serving(always(sized), close_after_each=True) as server:
        # The server closes each connection once it has answered (no Connection: close):
        # the next POST finds it closed and is sent on a new one.
        for _ in range(3):
            assert await poster.post(server.url(), b"{}", {}) == 204
            await asyncio.sleep(0.05)  # the close reaches the idle connection
        assert server.connections == 3 and len(server.requests) == 3
    await poster.aclose()


async def test_no_answer_fails_the_post_and_an_internal_address_is_refused() -> None:
    poster = Poster(allow_private=True, timeout_s=0.2)
    async with serving(lambda n: b"") as server:  # reads the request, answers nothing
        with pytest.raises(PostFailed, match=r"before its answer ended|TimeoutError"):
            await poster.post(server.url(), b"{}", {})
    silent = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await silent.wait()
        writer.close()

    quiet = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = quiet.sockets[0].getsockname()[1]
    with pytest.raises(PostFailed, match=r"TimeoutError: no answer within 0\.2 s"):
        await poster.post(f"http://127.0.0.1:{port}/", b"{}", {})
    silent.set()
    quiet.close()
    await poster.aclose()
    strict = Poster(allow_private=False, timeout_s=1)
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.1 is 127\.0\.0\.1, an internal address"):
        await strict.post(f"http://127.0.0.1:{port}/", b"{}", {})
    await strict.aclose()
