"""The HTTP edge: what happens to a connection before a request reaches our handlers, and around them.

aiohttp parses requests in `web_protocol.RequestHandler`, one per connection; `web.run_app` takes no
handler class, so `memsvc serve` runs its own `EdgeRunner` (an `AppRunner` whose `Server` makes
`EdgeProtocol`s). What the edge adds:

- **Deadlines on receiving a request, never on answering it.** The head of a request (request line and
  headers) must arrive within `MEMSVC_HEADER_TIMEOUT_SECONDS`, counted from the connection's start for
  the first request and from its first byte for later ones; its body within `MEMSVC_BODY_TIMEOUT_SECONDS`
  of the end of the head. A late head is answered 408 and the connection closed (a connection that sent
  nothing is closed without an answer); a late body makes the handler's read fail, so the handler answers
  408. Once a request has arrived no edge timer runs: a handler may take as long as it needs, and a
  long-lived answer (an event stream, a long-poll) bounds its own duration in its handler. Between
  requests the keep-alive timeout (`MEMSVC_KEEPALIVE_TIMEOUT_SECONDS`) closes idle connections.
- **A client must take what it is sent**: once the transport holds more than its high-water mark, the
  client must take some of it every `MEMSVC_SEND_TIMEOUT_SECONDS`, or the connection is dropped and the
  memory with it. This bounds a non-reading client of any answer, an event stream's too; the size of one
  answer is bounded in `routes/common.py` (`MEMSVC_MAX_RESPONSE_BYTES`).
- **A bound on open connections per process** (`MEMSVC_MAX_CONNECTIONS`): a connection past it is
  answered at once with a 503 `too_many_connections` (with `Retry-After`) and closed, rather than being
  refused at the socket, so that a client or load balancer learns why and retries elsewhere.
- **Bodies read as they arrive** (the import's NDJSON, `STREAMED_BODIES`): no `Content-Length` bound, and the body
  deadline counts only time without progress: it runs again while bytes keep arriving, or while the handler has
  not taken those that did (reading is paused then).
- **Checks of the head before the body is read**: a `Content-Length` above `MEMSVC_MAX_BODY_BYTES` is 413,
  any `Content-Encoding` other than `identity` 415, an `Expect` other than `100-continue` 417, an HTTP
  version other than 1.0 and 1.1 505, a target that is not a path (`OPTIONS *`, `CONNECT host:port`) 400.
- **aiohttp's parser errors as our JSON errors**, with an `X-Request-ID`, and a message that never repeats
  what the client sent (a malformed header may be the API key); each is logged as one WARNING line, at
  most one a second, without a header value or a traceback.
- **No `Server` header**: aiohttp would name itself and its version in every response.

It relies on aiohttp internals (the message queue of `RequestHandler`, `_ErrInfo`, the request factory's
`_cls`); `tests/test_edge.py` pins them, and `pyproject.toml` the aiohttp versions they were read from.
"""

import asyncio
import contextlib
import logging
import random
import resource
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from memsvc.appkeys import STREAMED_BODIES
from memsvc.endpoint import error_response
from memsvc.settings import Settings

log = logging.getLogger('memsvc.edge')

_VERSIONS = (HttpVersion11, HttpVersion10)
REFUSED_LINGER_SECONDS = 1.0
"""How long a connection refused at the cap stays half-open after its 503, so that the request the client
sent meanwhile is read and the close does not reset the connection (and the 503 with it)."""
FD_RESERVE = 64
"""Descriptors kept for everything but client connections (listening sockets, logs, the store's own
connections come on top: `MEMSVC_REDIS_MAX_CONNECTIONS`)."""
DEFAULT_MAX_CONNECTIONS = 1000
WARNING_INTERVAL_SECONDS = 1.0


class Refusal(Exception):
    """A request (or connection) the edge answers itself, with our JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class RateLimitedLog:
    """At most one WARNING line per interval; the next line says how many were left out."""

    def __init__(self, interval: float = WARNING_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._next = 0.0
        self._left_out = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.interval
        if self._left_out:
            text += f' ({self._left_out} more such lines left out)'
            self._left_out = 0
        log.warning('%s', text)


def _new_request_id() -> str:
    return random.getrandbits(128).to_bytes(16).hex()


def max_connections(settings: Settings) -> int:
    """The connection bound of this process: `MEMSVC_MAX_CONNECTIONS`, or 1000 and fewer when the descriptor
    limit is lower. Raises the soft descriptor limit towards the hard one first (as Go's runtime does);
    raises ValueError when an explicit bound cannot fit under the hard limit."""
    reserve = FD_RESERVE + settings.redis_max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (settings.max_connections or DEFAULT_MAX_CONNECTIONS) + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    room = wanted if soft == resource.RLIM_INFINITY else soft - reserve
    if settings.max_connections is None:
        return max(1, min(DEFAULT_MAX_CONNECTIONS, room))
    if settings.max_connections > room:
        raise ValueError(
            f'max_connections: {settings.max_connections} connections and {reserve} other descriptors do not fit '
            f"in this process's descriptor limit of {soft} (ulimit -n); lower it or raise the limit"
        )
    return settings.max_connections


class EdgeRequest(web.Request):
    """A request whose responses carry no `Server` header (aiohttp adds its name and version by default,
    in `_prepare_headers`, just before this hook). The hook replaces aiohttp's, which sends the apps'
    `on_response_prepare` signals: `EdgeServer` refuses an app that has any."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.popall(hdrs.SERVER, None)


class EdgeServer(web.Server):
    """aiohttp's `Server` with our protocol, our request class, and the count of open connections."""

    def __init__(self, app: web.Application, base: web.Server, settings: Settings, connections: int) -> None:
        super().__init__(
            base.request_handler,
            request_factory=self._edge_request,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._app_request = app._make_request
        if app.on_response_prepare:
            raise RuntimeError('the edge does not send on_response_prepare signals (see EdgeRequest)')
        self.settings = settings
        self.max_connections = connections
        self.open_connections = 0
        """Connections accepted and not yet lost (those refused at the cap are not counted)."""
        self.warnings = RateLimitedLog()
        self.max_body_bytes = limit = settings.max_body_bytes
        self.streamed_bodies = app.get(STREAMED_BODIES, frozenset())
        self._refusals = {
            'too_large': Refusal(
                413, 'body_too_large', f'the body is larger than {limit} bytes (MEMSVC_MAX_BODY_BYTES)'
            ),
            'encoding': Refusal(
                415, 'unsupported_content_encoding', 'send the body without Content-Encoding (identity only)'
            ),
            'expect': Refusal(417, 'expectation_failed', 'the only Expect this server meets is 100-continue'),
            'version': Refusal(505, 'http_version_not_supported', 'this server speaks HTTP/1.1 and HTTP/1.0'),
            'target': Refusal(
                400, 'bad_request', 'the request target must be a path starting with / (this is not a proxy)'
            ),
        }

    def _edge_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: 'asyncio.Task[None]',
    ) -> web.BaseRequest:
        # `_cls` given by position: a functools.partial with it as a keyword cost more per request (callgrind)
        return self._app_request(message, payload, protocol, writer, task, EdgeRequest)

    def __call__(self) -> 'EdgeProtocol':
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

    def refusal(self, message: RawRequestMessage) -> Refusal | None:
        """What the edge answers instead of handling this request head, or None (the usual case)."""
        version = message.version
        if version is not HttpVersion11 and version != HttpVersion10:
            return self._refusals['version']
        if not message.path.startswith('/') and (not message.url.absolute or message.method == hdrs.METH_CONNECT):
            return self._refusals['target']
        headers = message.headers
        length = headers.get(hdrs.CONTENT_LENGTH)
        too_long = length is not None and int(length) > self.max_body_bytes  # the parser checked: digits
        if too_long and message.url.path not in self.streamed_bodies:
            return self._refusals['too_large']
        if hdrs.CONTENT_ENCODING in headers and headers[hdrs.CONTENT_ENCODING].strip().lower() != 'identity':
            return self._refusals['encoding']
        if hdrs.EXPECT in headers and headers[hdrs.EXPECT].strip().lower() != '100-continue':
            return self._refusals['expect']
        return None

    def too_many_connections(self) -> bytes:
        """The whole 503 answer to a connection past the cap, written before any request is read."""
        limit = self.max_connections
        message = f'this server holds its limit of {limit} open connections (MEMSVC_MAX_CONNECTIONS); retry shortly'
        response = error_response(503, 'too_many_connections', message, {'Retry-After': '1'})
        assert isinstance(response.body, bytes)
        head = [f'HTTP/1.1 503 {response.reason}', *(f'{name}: {value}' for name, value in response.headers.items())]
        head += [f'Content-Length: {len(response.body)}', 'Connection: close', f'Date: {formatdate(usegmt=True)}']
        head.append(f'X-Request-ID: {_new_request_id()}')
        return ('\r\n'.join(head) + '\r\n\r\n').encode() + response.body


class EdgeProtocol(RequestHandler):
    """aiohttp's protocol of one connection, with the edge's deadlines, checks and error answers.

    One timer at a time runs on a connection: the head deadline while a head is arriving (`_body` is None),
    the body deadline while the body of the newest request is (`_body` is its payload), none otherwise.
    """

    __slots__ = ('_body', '_body_seen', '_counted', '_deadline', '_edge', '_partial', '_refused', '_stall', '_unsent')

    def __init__(self, manager: EdgeServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._edge = manager
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._body_seen = -1
        """For a body read as it arrives: its bytes received when its deadline was set (-1: any other body)."""
        self._partial = False
        """Whether bytes other than blank lines arrived since the last complete head."""
        self._refused = False
        """Set once this connection is being answered by the edge and closed: nothing more is parsed."""
        self._counted = False
        self._stall: asyncio.TimerHandle | None = None
        self._unsent = 0
        """While writing is paused: the bytes waiting to be sent at the last check."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        edge = self._edge
        if edge.open_connections >= edge.max_connections:
            self._refuse_connection(transport)
            return
        edge.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        self._deadline = self._loop.call_later(edge.settings.header_timeout_seconds, self._head_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._edge.open_connections -= 1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client takes the answer slower than it is written: from now on it must take some of it every
        `MEMSVC_SEND_TIMEOUT_SECONDS`, or the connection is dropped with what it holds."""
        super().pause_writing()
        if self.transport is not None and self._stall is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._stall = self._loop.call_later(self._edge.settings.send_timeout_seconds, self._check_progress)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _check_progress(self) -> None:
        self._stall = None
        transport = self.transport
        if transport is None:
            return
        unsent = transport.get_write_buffer_size()
        if unsent < self._unsent:
            self._unsent = unsent
            self._stall = self._loop.call_later(self._edge.settings.send_timeout_seconds, self._check_progress)
            return
        seconds = self._edge.settings.send_timeout_seconds
        self._edge.warnings.warning(
            f'dropped a connection from {self._peer()}: it took none of its answer in {seconds} s '
            f'(MEMSVC_SEND_TIMEOUT_SECONDS), {unsent} bytes unsent'
        )
        transport.abort()

    def data_received(self, data: bytes) -> None:
        """aiohttp's `RequestHandler.data_received` for a connection that is not upgraded, copied (from 3.14.5;
        a test pins its source) so that the edge's checks run in the same call: a wrapper around it added a
        call to every read, 1 % of a request. The rest of the edge's work is in `_received`."""
        if self._refused or self._force_close or self._close:
            return
        parser = self._parser
        if self._payload_parser is not None or self._upgraded or parser is None:
            RequestHandler.data_received(self, data)
            return
        messages: Sequence[tuple[Any, StreamReader]]
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            messages, upgraded, tail = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)], False, b''
        queue = self._messages
        for entry in messages:
            self._request_count += 1
            queue.append(entry)
        waiter = self._waiter
        if messages and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._buffer_paused and len(queue) >= self._max_msg_queue_size:
            self._pause_reading_for_buffer()
        self._upgraded = upgraded
        if upgraded and tail:
            self._message_tail = tail
        if len(messages) == 1 and self._deadline is None:
            # The hot path, kept to a few checks: one whole request in one read, with its body if any. (No timer
            # runs, so no partial head came before: `_partial` is False already.)
            message, payload = messages[0]
            if message.__class__ is RawRequestMessage and message.version is HttpVersion11 and message.path[:1] == '/':
                if payload is EMPTY_PAYLOAD:
                    return
                # A body that is here already needs no early 413: the handler's read refuses it as too large.
                headers = message.headers
                if payload.is_eof() and hdrs.CONTENT_ENCODING not in headers and hdrs.EXPECT not in headers:
                    return
        self._received(len(messages), data)

    def _received(self, new: int, data: bytes) -> None:
        """What the last bytes did, off the hot path: completed `new` heads, or part of a head or body."""
        if new:
            if self._deadline is not None and self._heads_arrived_late():
                return
            self._partial = False
            self._check_heads(new)
        elif self._body is not None:
            if self._body.is_eof():
                self._body_arrived()
        elif data.strip(b'\r\n'):
            self._partial = True
            if self._deadline is None:
                self._deadline = self._loop.call_later(self._edge.settings.header_timeout_seconds, self._head_late)

    def _body_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._body = None

    def _heads_arrived_late(self) -> bool:
        """Heads arrived while a deadline ran: a head's, which they meet, or a body's, which only a parse error
        of the body ends (no head completes while a body is being received). True when it was that error."""
        body = self._body
        self._body_arrived()
        if body is None or body.is_eof():
            return False
        error = self._messages[-1][0]
        assert isinstance(error, _ErrInfo)
        self._refused = True
        self._body_failed(body, error)
        return True

    def _expect_body(self, payload: StreamReader, streamed: bool) -> None:
        self._body = payload
        self._body_seen = payload.total_bytes if streamed else -1
        self._deadline = self._loop.call_later(self._edge.settings.body_timeout_seconds, self._body_late)

    def _check_heads(self, new: int) -> None:
        """Check each of the heads that the last bytes completed (the newest `new` entries of the queue)."""
        messages = self._messages
        for index in range(len(messages) - new, len(messages)):
            message = messages[index][0]
            if isinstance(message, _ErrInfo):  # aiohttp's parser failed; it parses nothing more
                self._refused = True
                return
            refusal = self._edge.refusal(message)
            if refusal is not None:
                messages[index] = (_ErrInfo(status=refusal.status, exc=refusal, message=refusal.message), EMPTY_PAYLOAD)
                while len(messages) > index + 1:
                    messages.pop()
                self._refused = True
                return
        last, payload = messages[-1]
        if not payload.is_eof():
            assert isinstance(last, RawRequestMessage)  # (the loop above returned on an _ErrInfo)
            self._expect_body(payload, last.url.path in self._edge.streamed_bodies)

    def _body_failed(self, payload: StreamReader, error: _ErrInfo) -> None:
        """The body being received is malformed (a bad chunk): aiohttp queues its 400 behind the request and
        leaves the request's handler waiting for the rest of the body. The handler's read fails instead, and
        the handler's answer is the only one."""
        self._messages.pop()  # the error, queued last
        self._lingering_time = 0.0
        reason = _llhttp_reason(error.message)
        detail = f': {reason}' if reason else ''
        payload.set_exception(web.HTTPBadRequest(text=f'the request body is not valid chunked encoding{detail}'))

    def _head_late(self) -> None:
        self._deadline = None
        if self._refused or self._force_close or self.transport is None:
            return
        if not self._partial:  # nothing but blank lines since the last request
            if not self._request_in_progress and not self._messages:
                self.force_close()
            return
        self._refused = True
        seconds = self._edge.settings.header_timeout_seconds
        refusal = Refusal(
            408,
            'request_timeout',
            f'the request head did not arrive within {seconds} s (MEMSVC_HEADER_TIMEOUT_SECONDS)',
        )
        self._messages.append((_ErrInfo(status=408, exc=refusal, message=refusal.message), EMPTY_PAYLOAD))
        self._request_count += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body_late(self) -> None:
        self._deadline = None
        payload, self._body = self._body, None
        if payload is None or payload.is_eof() or self.transport is None:
            return
        if self._body_seen >= 0 and (self._reading_paused or payload.total_bytes > self._body_seen):
            self._expect_body(payload, streamed=True)  # still arriving, or waiting for the handler to take it
            return
        self._refused = True
        self._lingering_time = 0.0  # what is left of the body is not read after the answer either
        seconds = self._edge.settings.body_timeout_seconds
        self._edge.warnings.warning(f'closed a connection from {self._peer()}: the request body took over {seconds} s')
        current = self._current_request
        if (current is not None and current.content is payload) or any(
            queued is payload for _, queued in self._messages
        ):
            # The handler's read fails with this, and the endpoint answers it as our JSON 408.
            message = f'the request body did not arrive within {seconds} s (MEMSVC_BODY_TIMEOUT_SECONDS)'
            payload.set_exception(web.HTTPRequestTimeout(text=message))
        else:  # the handler has answered already; aiohttp is reading the rest of the body to discard it
            self.force_close()

    def _refuse_connection(self, transport: asyncio.BaseTransport) -> None:
        """Answer 503 before reading anything, half-close, and close when the client does (or soon)."""
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not derive from asyncio's
        self.transport = transport
        self._refused = True
        self._manager = None  # aiohttp's connection_lost has nothing to undo for this connection
        edge = self._edge
        edge.warnings.warning(
            f'refused a connection from {self._peer()}: {edge.max_connections} connections are open '
            '(MEMSVC_MAX_CONNECTIONS)'
        )
        transport.write(edge.too_many_connections())
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self._loop.call_later(REFUSED_LINGER_SECONDS, transport.close)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info('peername') if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else 'an unknown peer'

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Our JSON error for what aiohttp answers itself: parser errors, the edge's refusals, and a handler
        that failed outside the endpoint's error map. Never repeats the client's bytes."""
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, so the connection is broken
            raise ConnectionError('cannot answer with an error: a response was sent already')
        refusal = describe(status, exc)
        if refusal.status == 500:
            log.error('unhandled error outside the endpoint', exc_info=exc)
        else:
            self._edge.warnings.warning(
                f'answered {refusal.status} {refusal.code} to {self._peer()} before its request was handled: '
                f'{refusal.message}'
            )
        response = error_response(refusal.status, refusal.code, refusal.message, refusal.headers)
        response.headers['X-Request-ID'] = _new_request_id()
        response.force_close()
        return response


def describe(status: int, exc: BaseException | None) -> Refusal:
    """The status, code and message a client gets for an error aiohttp reports: fixed texts and llhttp's own
    reason, never the bytes the exception quotes."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, LineTooLong):
        # The C parser quotes the request line as a bytearray and a header as bytes (pinned by a test).
        limit = exc.args[1]
        if isinstance(exc.args[0], bytearray):
            return Refusal(414, 'uri_too_long', f'the request line is longer than {limit} bytes')
        return Refusal(431, 'header_too_large', f'a header is longer than {limit} bytes')
    if isinstance(exc, BadHttpMethod) and 'HTTPS' in exc.message:
        return Refusal(400, 'bad_request', 'this port speaks plain HTTP, not TLS: use http://, not https://')
    if isinstance(exc, HttpProcessingError):
        reason = _llhttp_reason(exc.message)
        if exc.message == 'Too many headers received':
            return Refusal(431, 'header_too_large', 'the request has too many headers')
        if isinstance(exc, BadStatusLine) and reason == 'Invalid HTTP version':
            return Refusal(505, 'http_version_not_supported', 'this server speaks HTTP/1.1 and HTTP/1.0')
        detail = f': {reason}' if reason else ''
        return Refusal(400, 'bad_request', f'the request is not valid HTTP/1.1{detail}')
    if status == 504:
        return Refusal(504, 'timeout', 'the request took too long to handle')
    return Refusal(500, 'internal_error', 'the server failed to handle this request')


def _llhttp_reason(message: str) -> str | None:
    """llhttp's description of a parse error, which its messages put before the quoted bytes: a fixed text
    of llhttp's (e.g. "Invalid header value char"), never the client's."""
    reason, sep, _ = message.removeprefix('Bad status line:\n  ').partition(':\n\n')
    if sep and 0 < len(reason) <= 80 and reason.isascii() and reason.isprintable():
        return reason
    return None


class EdgeRunner(web.AppRunner):
    """An `AppRunner` whose server is an `EdgeServer`: the app starts and stops as under `web.run_app`."""

    def __init__(self, app: web.Application, settings: Settings, connections: int, **kwargs: Any) -> None:
        kwargs.setdefault('keepalive_timeout', settings.keepalive_timeout_seconds)
        kwargs.setdefault('shutdown_timeout', settings.shutdown_timeout)
        super().__init__(app, auto_decompress=False, **kwargs)  # no encoded body gets past the edge anyway
        self.settings, self.connections = settings, connections

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # runs the app's start-up
        return EdgeServer(self.app, base, self.settings, self.connections)


def run(
    app: web.Application, settings: Settings, connections: int, loop: asyncio.AbstractEventLoop, **runner_args: Any
) -> None:
    """Serve `app` through the edge on `settings.host:port` until SIGTERM/SIGINT, as `web.run_app` does.

    `connections` is the bound from `max_connections`; `reuse_port` goes to the listening socket, the rest to
    `EdgeRunner`. Raises what the app's start-up raises (a store that cannot be reached).
    """
    reuse_port = runner_args.pop('reuse_port', None)

    async def serve() -> None:
        runner = EdgeRunner(app, settings, connections, handle_signals=True, **runner_args)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port).start()
            await loop.create_future()  # until a signal raises GracefulExit out of the loop
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(serve())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        rest = asyncio.all_tasks(loop)
        for other in rest:
            other.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
