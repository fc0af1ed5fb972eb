"""A session's event stream (`GET …/sessions/{id}/events`, `text/event-stream`) and the long-poll wait, over
`memsvc.events`.

A stream keeps the id of the last message it sent. When woken it reads the store after that id and sends each
message as it is stored (the bytes every read answers), in id order: a message reaches a stream once, and a
lost wake-up delays it only until the next wake-up or poll. The other changes (`message_deleted`, `truncated`,
`cleared`, `deleted`) come with their wake-ups, in the order of the writes: before such a change, the stream
sends the messages that the wake-ups before it announced (those still stored), so that, e.g., a message
appended after a clear is not sent before the `cleared` event. A change whose wake-up was lost (a Redis
restart) is not sent; a client that must know re-reads the messages when it reconnects.

Not aiohttp-sse: this writes the stored bytes as they are (aiohttp-sse's `send` takes a str and splits and
re-encodes it for every event, which with one append fanned out to many streams is per-stream work), and the
keep-alive comment is the timeout of the wait for the next wake-up rather than a second task and timer per
stream (aiohttp-sse's ping task). A client that takes nothing is dropped by the edge
(`MEMSVC_SEND_TIMEOUT_SECONDS`), which aiohttp-sse's own send timeout would duplicate. What it does and we do too:
the headers (`Cache-Control: no-cache`, `X-Accel-Buffering: no`) and a comment line as the keep-alive.
"""

import asyncio
import functools
import logging

from aiohttp import web

from memsvc.context import message_id
from memsvc.errors import BackendUnavailable, SessionNotFound
from memsvc.events import POLL_SECONDS, Change, Hub, Listener
from memsvc.logs import CURRENT_REQUEST_ID
from memsvc.manager import AsyncMemoryManager
from memsvc.stores.base import MessageRange

log = logging.getLogger('memsvc')

PAGE = 500
"""Messages per read while a stream catches up."""
HEADERS = {'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'}
KEEPALIVE = b': keep-alive\n\n'


class EventStream:
    """One open stream: what it has sent, and how it sends the next changes."""

    def __init__(
        self,
        request: web.Request,
        manager: AsyncMemoryManager,
        hub: Hub,
        listener: Listener,
        after: int,
        keepalive: float,
    ) -> None:
        self.request, self.manager, self.hub, self.listener = request, manager, hub, listener
        self.tenant, self.session_id = listener.key
        self.last = after
        """The id of the last message sent (or the one the client resumed after)."""
        self.keepalive = keepalive
        self.response = web.StreamResponse(headers=HEADERS)
        self.response.headers['X-Request-ID'] = CURRENT_REQUEST_ID.get('-')
        self._loop = asyncio.get_running_loop()
        self._written = self._loop.time()

    async def run(self, first: list[bytes]) -> web.StreamResponse:
        """Send `first` (read before the stream began, so that a missing session was a JSON 404), then every
        change, until the session is deleted, the client goes, or the process stops."""
        await self.response.prepare(self.request)
        try:
            await self._send_messages(first)
            await self._serve()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: the listener goes with the handler
        return self.response

    async def _serve(self) -> None:
        listener, hub = self.listener, self.hub
        retry = False
        while not hub.closing and self.request.transport is not None:
            poll = POLL_SECONDS if retry else hub.poll_seconds
            quiet = self.keepalive - (self._loop.time() - self._written)
            woken = await listener.wait(min(quiet, poll) if poll is not None else quiet)
            if hub.closing:
                return
            if self._loop.time() - self._written >= self.keepalive:
                await self._write(KEEPALIVE)
            if not woken and poll is None:
                continue
            changes = listener.take()
            try:
                ended = await self._apply(changes)
            except BackendUnavailable as exc:
                log.info('event stream: the store did not answer (%s); retrying', exc.message)
                listener.changes.extendleft(reversed(changes))
                retry = True
                continue
            retry = False
            if ended:
                return

    async def _apply(self, changes: list[Change]) -> bool:
        """Send what `changes` announce, then whatever else follows the last id sent; True once deleted."""
        announced = self.last
        for n, change in enumerate(changes):
            if change.kind == 'message':
                announced = max(announced, change.number)
                continue
            if change.kind == 'deleted':
                await self._event(b'deleted', b'{}')
                return True
            if announced > self.last and not await self._catch_up(before=announced + 1):
                return True
            del changes[: n + 1]  # sent: not to be sent again should a later read fail
            await self._event(change.kind.encode(), _data(change))
            return await self._apply(changes)
        changes.clear()
        return not await self._catch_up(before=None)

    async def _catch_up(self, before: int | None) -> bool:
        """Send the stored messages after the last one sent (below `before`); False when the session is gone
        (then `deleted` was sent)."""
        manager, key = self.manager, self.listener.key
        while True:
            selection = MessageRange(limit=PAGE, before=before, after=self.last)
            try:  # the streams of this session that sent the same last id read once (`shared_reads`)
                read = functools.partial(manager.read_messages, self.tenant, self.session_id, selection)
                page = await self.hub.reads.read(key, ('stream', selection), read)
            except SessionNotFound:
                await self._event(b'deleted', b'{}')
                return False
            await self._send_messages(page)
            if len(page) < PAGE:
                return True

    async def _send_messages(self, messages: list[bytes]) -> None:
        if not messages:
            return
        chunks = []
        for raw in messages:
            number = message_id(raw)
            chunks.append(b'event: message\nid: %d\ndata: %s\n\n' % (number, raw))
            self.last = number
        await self._write(b''.join(chunks))

    async def _event(self, kind: bytes, data: bytes) -> None:
        await self._write(b'event: %s\ndata: %s\n\n' % (kind, data))

    async def _write(self, data: bytes) -> None:
        self._written = self._loop.time()
        await self.response.write(data)


def _data(change: Change) -> bytes:
    if change.kind == 'message_deleted':
        return b'{"id":%d}' % change.number
    if change.kind == 'truncated':
        return b'{"after":%d}' % change.number
    return b'{}'


async def wait_for_messages(
    manager: AsyncMemoryManager, hub: Hub, tenant: str, session_id: str, selection: MessageRange, wait: int
) -> bytes:
    """The long-poll: the selected messages as soon as there are any, or `[]` after `wait` seconds (or at once
    when the process stops). An unknown session is 404 at once; one deleted meanwhile, 404 when it is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with hub.listen(tenant, session_id) as listener:
        what, read = ('long-poll', selection), functools.partial(manager.get_messages, tenant, session_id, selection)
        while True:
            listener.take()  # a wake-up from now on ends the wait below at once
            messages = await hub.reads.read(listener.key, what, read)
            remaining = deadline - loop.time()
            if messages != b'[]' or remaining <= 0 or hub.closing:
                return messages
            poll = hub.poll_seconds
            await listener.wait(remaining if poll is None else min(remaining, poll))
