"""The client's own HTTP/1.1 connections (`memsvc.client.http`) against a small server in this process that answers
the ways a proxy in front of memsvc may: with a length, in chunks, to the end of the connection, closing it, or
breaking it half-way."""

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import yarl

from memsvc.client import AsyncMemsvcClient, Retries, TransportError
from memsvc.client.http import ConnectionBroke, HttpPool, _parse

Reply = Callable[[bytes], bytes | None]
CLOSE = b'<close>'
"""At the end of an answer: the server closes the connection after sending the rest."""


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[Reply], list[int]]]:
    """A server whose next answers are the functions in `replies` (each given the request head; None: close without
    answering); `connections` counts the connections it accepted."""
    replies: list[Reply] = []
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b'\r\n\r\n')
                length = next((int(line.split(b':')[1]) for line in head.split(b'\r\n')
                               if line.lower().startswith(b'content-length:')), 0)  # fmt: skip
                await reader.readexactly(length)
                answer = replies.pop(0)(head)
                if answer is None:
                    return
                writer.write(answer.removesuffix(CLOSE))
                await writer.drain()
                if b'Connection: close' in answer or answer.endswith(CLOSE):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    listening = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = listening.sockets[0].getsockname()[1]
    yield f'http://127.0.0.1:{port}', replies, connections
    listening.close()
    await listening.wait_closed()


def _answer(body: bytes, *headers: bytes) -> Reply:
    return lambda head: b'HTTP/1.1 200 OK\r\n' + b''.join(h + b'\r\n' for h in headers) + b'\r\n' + body


async def test_answers_by_length_chunks_and_end_of_connection(server: tuple[str, list[Reply], list[int]]) -> None:
    url, replies, connections = server
    pool = HttpPool(yarl.URL(url), 4, {})
    try:
        replies.append(_answer(b'[1]', b'Content-Length: 3'))
        replies.append(_answer(b'2\r\n[2\r\n1;x=y\r\n]\r\n0\r\n\r\n', b'Transfer-Encoding: chunked'))
        replies.append(_answer(b'[3]', b'Connection: close'))
        replies.append(_answer(b'[4]', b'Content-Length: 3'))
        bodies = [(await pool.request('GET', '/x', None, None, 10)).body for _ in range(4)]
        assert bodies == [b'[1]', b'[2]', b'[3]', b'[4]']
        assert len(connections) == 2, 'kept alive, except after the answer that closed'
        replies.append(lambda head: b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[5' + CLOSE)
        with pytest.raises(ConnectionBroke):
            await pool.request('GET', '/x', None, None, 10)
    finally:
        pool.close()


def test_a_partial_answer_is_not_complete() -> None:
    whole = b'HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nETag: "3"\r\n\r\nnope'
    for cut in range(len(whole)):
        assert _parse(bytearray(whole[:cut]), eof=False) is None
    answer = _parse(bytearray(whole), eof=False)
    assert answer is not None
    assert (answer.status, answer.headers['etag'], answer.body) == (404, '"3"', b'nope')
    with pytest.raises(ValueError, match='SSH'):
        _parse(bytearray(b'SSH-2.0-OpenSSH\r\n\r\n'), eof=False)


async def test_a_broken_answer_is_retried_only_when_safe(server: tuple[str, list[Reply], list[int]]) -> None:
    url, replies, _ = server
    ok = _answer(b'{"success":true}', b'Content-Length: 16', b'Content-Type: application/json')
    async with AsyncMemsvcClient(url, retries=Retries(attempts=3, backoff=0.01)) as client:
        replies.extend([lambda head: None, _answer(b'[]', b'Content-Length: 2')])
        assert await client.get_messages('s') == [], 'a read is sent again after a broken connection'
        replies.extend([lambda head: None, ok])
        with pytest.raises(TransportError):
            await client.clear_messages('s')  # a write without a key: it may have been applied
        assert replies == [ok], 'sent once'


async def test_an_answer_that_does_not_come_is_a_timeout(server: tuple[str, list[Reply], list[int]]) -> None:
    url, replies, connections = server
    async with AsyncMemsvcClient(url, timeout=0.2, retries=1) as client:
        replies.extend([lambda head: b'', _answer(b'[]', b'Content-Length: 2')])  # nothing, on an open connection
        with pytest.raises(TransportError, match='no answer in time'):
            await client.get_messages('s')
        assert await client.get_messages('s') == []
    assert len(connections) == 2, 'the connection that timed out was not used again'
