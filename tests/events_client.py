"""A reader of `text/event-stream` answers for the tests, as EventSource reads them."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from memsvc.client.events import frames


@dataclass(frozen=True)
class Event:
    kind: str
    id: str | None
    data: bytes


async def events(content: aiohttp.StreamReader) -> AsyncIterator[Event]:
    """The events of a stream, until it ends, read by the client's parser. Comment lines are skipped; `data` is
    the raw bytes."""
    async for kind, event_id, data in frames(content):
        yield Event(kind, event_id, data)


async def comments(content: aiohttp.StreamReader, count: int) -> int:
    """Read until `count` comment lines have come; how many events came meanwhile."""
    seen = events_seen = 0
    while seen < count:
        line = await content.readline()
        assert line, 'the stream ended'
        if line.startswith(b':'):
            seen += 1
        elif line.startswith(b'event:'):
            events_seen += 1
    return events_seen


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20.0) -> None:
    """Poll `check` until it holds; fail after a generous `seconds` (a bound, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f'not within {seconds} s: {what}'
        await asyncio.sleep(0.02)
