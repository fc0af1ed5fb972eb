"""A session's event stream (`GET …/events`, Server-Sent Events) read as `Event`s, resumed by `Last-Event-ID`.

The stream is always opened with `Last-Event-ID` set: the id of the last message given, or at the start the id the
caller gave (`after`), or else the session's newest message id read just before (so that the first connection and
every later one agree on where the stream is: a message written between that read and the connection is sent,
not lost). After a dropped connection, an end without `deleted` (a server stopping), a timeout or a 503, it opens
the stream again after the last message it gave; the server sends the stored messages after that id first, then
carries on. `message_deleted`, `truncated` and `cleared` events that happened while no stream was open are not
replayed (the server keeps no log of them): re-read the messages after a reconnect if they matter.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from pydantic import TypeAdapter

from memsvc.client.errors import ApiError, TransportError
from memsvc.client.transport import Transport
from memsvc.models import Message

_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)
KINDS = ('message', 'message_deleted', 'truncated', 'cleared', 'deleted')


@dataclass(frozen=True, slots=True)
class Event:
    """One change of the session. `kind` is one of `KINDS`; `message` is set for `message` events (and `id` is its
    id); `data` is the event's JSON (`{"id"}` for `message_deleted`, `{"after"}` for `truncated`, else `{}`)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    message: Message | None = None
    id: int | None = None


class EventStream:
    def __init__(
        self,
        transport: Transport,
        path: str,
        after: int | None,
        read_timeout: float,
        newest: Callable[[str], Awaitable[int]],
    ) -> None:
        self._transport, self._path, self._after = transport, path, after
        self._read_timeout, self._newest = read_timeout, newest

    async def run(self) -> AsyncGenerator[Event, None]:
        last = self._after if self._after is not None else await self._newest(self._path)
        policy = self._transport.retries
        attempt, outage_started = 0, None
        while True:
            try:
                async with self._transport.stream(
                    f'{self._path}/events', {'Last-Event-ID': str(last)}, self._read_timeout
                ) as reply:
                    attempt, outage_started = 0, None
                    async for event in _events(reply.content):
                        if event.kind == 'message' and event.id is not None:
                            last = event.id
                        yield event
                        if event.kind == 'deleted':
                            return
                error: ApiError = TransportError(f'the event stream of {self._path} ended')
            except ApiError as exc:
                if exc.status is not None and exc.status != 503:
                    raise
                error = exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = TransportError(f'the event stream of {self._path} broke: {type(exc).__name__}')
            attempt += 1
            now = time.monotonic()
            outage_started = outage_started or now
            wait = policy.delay(attempt, error.retry_after)
            if now + wait - outage_started > policy.deadline:
                raise error
            await asyncio.sleep(wait)


async def frames(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str | None, bytes]]:
    """The events of one connection as `(event, id, data)`, until it ends; comment lines (keep-alives) are skipped."""
    kind, event_id, data = 'message', None, b''
    while True:
        line = await content.readline()
        if not line:
            return
        line = line.rstrip(b'\r\n')
        if not line:
            if data:
                yield kind, event_id, data
            kind, event_id, data = 'message', None, b''
        elif line.startswith(b':'):
            continue
        else:
            name, _, value = line.partition(b':')
            value = value.removeprefix(b' ')
            if name == b'event':
                kind = value.decode()
            elif name == b'id':
                event_id = value.decode()
            elif name == b'data':
                data = value if not data else data + b'\n' + value


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[Event]:
    async for kind, event_id, data in frames(content):
        if kind == 'message':
            message = _MESSAGE.validate_json(data, extra='ignore')
            yield Event(kind, orjson.loads(data), message, message['id'])
        else:
            yield Event(kind, orjson.loads(data), None, int(event_id) if event_id and event_id.isdigit() else None)
