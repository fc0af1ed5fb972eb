"""The client's request/answer calls: HTTP/1.1 over keep-alive connections of its own, one asyncio protocol each.

Why not aiohttp's `ClientSession` for these (the event stream still uses it): a gateway makes two calls a turn, and
`ClientSession.request` costs about 340k instructions a call on uvloop (a request object, its headers as
multidicts, a body payload and a task to write it, timers, the response object and its stream), more than the
memsvc server spends answering it (~270k). Here a call is one `write` of prebuilt bytes and a parse of the answer's
head; the client then costs a fraction of what the server does, so one gateway process can keep a memsvc busy.

The answer's body is read by `Content-Length`, by chunks (`Transfer-Encoding: chunked`, as a proxy in front may
send it), or to the end of the connection. A connection goes back to the pool when its answer is complete and
keeps alive; one whose answer broke, timed out or said `Connection: close` is closed.
"""

import asyncio
import collections
import ssl
from collections.abc import Mapping
from typing import cast

import yarl


class ConnectFailed(OSError):
    """No connection could be made: the request was never sent."""


class ConnectionBroke(OSError):
    """The connection closed before the answer was complete: the request may or may not have been handled."""


class Answered:
    __slots__ = ('body', 'headers', 'status')

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answered] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            answer = _parse(self._buffer, eof=True)
            if answer is not None:
                waiter.set_result(answer)
            else:
                waiter.set_exception(ConnectionBroke('the connection closed before the answer was complete'))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = _parse(self._buffer, eof=False)
        except ValueError as exc:
            waiter.set_exception(ConnectionBroke(f'not an HTTP answer: {exc}'))
            self.close()
            return
        if answer is not None:
            self._waiter = None
            self._buffer = bytearray()
            if answer.headers.get('connection', '').lower() == 'close':
                self.close()
            waiter.set_result(answer)

    def send(self, request: bytes) -> 'asyncio.Future[Answered]':
        assert self.transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse(buffer: bytearray, *, eof: bool) -> Answered | None:
    """The answer in `buffer` once it is complete (None before); `eof`: the connection has ended."""
    end = buffer.find(b'\r\n\r\n')
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode('latin-1').split('\r\n')
    version, _, rest = lines[0].partition(' ')
    if not version.startswith('HTTP/1.'):
        raise ValueError(lines[0][:80])
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(':')
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    length = headers.get('content-length')
    if length is not None:
        size = int(length)
        if len(buffer) - start < size:
            return None
        return Answered(status, headers, bytes(buffer[start : start + size]))
    if headers.get('transfer-encoding', '').lower() == 'chunked':
        body = _dechunk(buffer, start)
        return None if body is None else Answered(status, headers, body)
    if status in (204, 304) or 100 <= status < 200:
        return Answered(status, headers, b'')
    if not eof:
        return None
    headers['connection'] = 'close'
    return Answered(status, headers, bytes(buffer[start:]))


def _dechunk(buffer: bytearray, at: int) -> bytes | None:
    body = bytearray()
    while True:
        line_end = buffer.find(b'\r\n', at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b';', 1)[0], 16)
        at = line_end + 2
        if size == 0:
            return bytes(body) if buffer.find(b'\r\n', at) >= 0 else None  # no trailers are sent to us
        if len(buffer) < at + size + 2:
            return None
        body += buffer[at : at + size]
        at += size + 2


def _expire(answer: 'asyncio.Future[Answered]') -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class HttpPool:
    """Up to `limit` keep-alive connections to the origin of `base_url`."""

    def __init__(self, base_url: yarl.URL, limit: int, headers: Mapping[str, str]) -> None:
        self.host = base_url.host or '127.0.0.1'
        self.port = base_url.port or (443 if base_url.scheme == 'https' else 80)
        self._ssl = ssl.create_default_context() if base_url.scheme == 'https' else None
        host = self.host if self.port in (80, 443) else f'{self.host}:{self.port}'
        common = {'Host': host, 'User-Agent': 'memsvc-client', **headers}
        self._head = ''.join(f'{name}: {value}\r\n' for name, value in common.items()).encode('latin-1')
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(limit)

    async def request(
        self, method: str, target: str, headers: Mapping[str, str] | None, body: bytes | None, seconds: float
    ) -> Answered:
        """One request on a pooled connection (`target`: the path and query, encoded), answered within `seconds`
        (waiting for a connection included), else `TimeoutError`. Raises `ConnectFailed` when no connection
        could be made, `ConnectionBroke` when the answer did not come whole. A connection whose answer did not come
        (a timeout, a cancellation) is closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self._slots.locked():
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            connection = self._idle_connection()
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect()
            head = [f'{method} {target} HTTP/1.1\r\n'.encode('latin-1'), self._head]
            if headers:
                head.append(''.join(f'{name}: {value}\r\n' for name, value in headers.items()).encode('latin-1'))
            if body is not None:
                head.append(b'Content-Length: %d\r\n\r\n' % len(body))
                head.append(body)
            else:
                head.append(b'\r\n')
            answer = connection.send(b''.join(head))
            expiry = loop.call_at(deadline, _expire, answer)  # cheaper than asyncio.timeout on the hot path
            try:
                reply = await answer
            except BaseException:
                connection.close()
                raise
            finally:
                expiry.cancel()
            if not connection.closed:
                self._idle.append(connection)
            return reply
        finally:
            self._slots.release()

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
        except OSError as exc:
            raise ConnectFailed(f'cannot connect to {self.host}:{self.port}: {exc}') from exc
        protocol.transport = transport  # uvloop calls connection_made after create_connection returns
        return protocol

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
