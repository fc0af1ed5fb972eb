"""Export: a tenant's sessions as NDJSON, one line per session, each line one session at one moment, in bounded memory.

A line is `{"id", "created_at", "updated_at", "metadata", "summary"?, "forked_from"?, "next_id", "messages": […]}`
(`models.SessionLine`): the messages exactly as stored, with their ids and timestamps, and `messages` last, so that an
import can read a line of any length in pieces (`memsvc.lines`). Sessions come in the order of the store's
`export_ids`: newest `updated_at` first, as the listing orders them, from a snapshot taken when the export begins.

One moment per session. A line is the session as the first read found it (`Store.read_export`, one atomic step on
every store but Chroma): its record, summary and next id, and which ids it stored then. Messages never change once
stored, and new ones get ids from that next id on, so the rest of a long session is read afterwards by id, in chunks,
and is still what it was at that moment, as long as each chunk holds exactly the ids the first read expects (from its
first id, gaps and count) and the session is the same one (the same `created_at`: not deleted and made again). So
appends, and changes of metadata or summary, after the first read do not matter; a message that went meanwhile
(deleted, truncated, trimmed, cleared) before it was read fails the check, and the line is read again. Why not a
version check on every chunk: each append moves the version, so a session in use would be read again and again; why
not a copy taken at once (on Redis, COPY in a script): it holds Redis for as long as the session is long.

A filtered export (`where`, the listing's `metadata.<key>=<value>`) takes its ids from the metadata index instead:
every page of the filtered listing first, before any line is sent, so that it is a snapshot too (a session written
meanwhile keeps its place rather than moving ahead of the pages still to come); it holds the ids of one person's
sessions, not their data. Each session read is checked against the filter again, and one that no longer matches (its
metadata changed meanwhile) is left out.

A line that takes one read is sent at once. A longer one is put together in a spool (memory up to `SPOOL_BYTES`, then
a temporary file) and sent once it is whole, so that a line read again never sends what its first reading did. What
the export holds at a time is so bounded by a few chunks and the spool's memory, whatever the sessions hold.
"""

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Final

import orjson

from memsvc.context import message_id
from memsvc.errors import BackendUnavailable
from memsvc.models import to_micros
from memsvc.stores import gaps as ids
from memsvc.stores.base import ExportRead, ListCursor, SessionImage, Store, join_newest
from memsvc.stores.index import Where, matches

READ_MESSAGES: Final = 10_000
"""The most messages one read takes."""
READ_BYTES: Final = 512 * 1024
"""About the most bytes of messages one read takes (at least one message)."""
AT_ONCE: Final = 16
"""Sessions whose first reads are sent together (on Redis, in one round trip)."""
SPOOL_BYTES: Final = 4 * 1024 * 1024
SEND_BYTES: Final = 256 * 1024
"""About the most bytes handed on at once: lines are gathered up to this much."""
ATTEMPTS: Final = 10
FILTERED_PAGE: Final = 1000
"""Sessions of one filtered listing page, for a filtered export's ids."""


def line_head(image: SessionImage) -> bytes:
    """A line up to its messages: `{…,"messages":[`."""
    record = image.record
    head: dict[str, object] = {
        'id': record.id,
        'created_at': record.created_at,
        'updated_at': record.updated_at,
        'metadata': orjson.Fragment(record.metadata),
    }
    if image.summary:
        head['summary'] = orjson.Fragment(image.summary)
    if record.forked_from:
        head['forked_from'] = orjson.Fragment(record.forked_from)
    head['next_id'] = image.next_id
    return orjson.dumps(head, option=orjson.OPT_UTC_Z)[:-1] + b',"messages":['


def joined(read: ExportRead) -> bytes:
    """A read's messages, joined by commas."""
    return join_newest(read.messages, len(read.messages))


class SessionChanged(Exception):
    """A message the first read listed went before it was read."""


class Exporter:
    def __init__(self, store: Store, tenant: str, where: Where = ()) -> None:
        self._store, self._tenant, self._where = store, tenant, where

    async def _ids(self) -> AsyncGenerator[list[str]]:
        """The ids to export, in pages: the store's snapshot, or (filtered) every page of the filtered listing."""
        if not self._where:
            async with contextlib.aclosing(self._store.export_ids(self._tenant)) as pages:
                async for page in pages:
                    yield page
            return
        found: list[str] = []
        after: ListCursor | None = None
        while True:
            sessions, more = await self._store.list_sessions(
                self._tenant, limit=FILTERED_PAGE, after=after, with_messages=False, where=self._where
            )
            found.extend(session.record.id for session in sessions)
            if not more or not sessions:
                break
            last = sessions[-1].record
            after = (to_micros(last.updated_at), last.id)
        for start in range(0, len(found), FILTERED_PAGE):
            yield found[start : start + FILTERED_PAGE]

    async def lines(self) -> AsyncGenerator[bytes]:
        """The export, in pieces of whole lines of about `SEND_BYTES` (a long line alone, in several)."""
        pending: list[bytes] = []
        size = 0
        async with contextlib.aclosing(self._ids()) as pages:
            async for page in pages:
                for group in _groups(page, AT_ONCE):
                    reads = await asyncio.gather(*(self._read(sid, 0) for sid in group))
                    for session_id, read in zip(group, reads, strict=True):
                        if read is None:
                            continue  # deleted since the snapshot
                        if self._where and not matches(read.image.record.metadata, self._where):
                            continue  # its metadata changed since the filtered listing
                        if len(read.messages) == read.held:
                            line = line_head(read.image) + joined(read) + b']}\n'
                            pending.append(line)
                            size += len(line)
                            if size >= SEND_BYTES:
                                yield b''.join(pending)
                                pending, size = [], 0
                            continue
                        if pending:
                            yield b''.join(pending)
                            pending, size = [], 0
                        async for part in self._long_line(session_id, read):
                            yield part
        if pending:
            yield b''.join(pending)

    async def _read(self, session_id: str, after: int) -> ExportRead | None:
        return await self._store.read_export(self._tenant, session_id, after, READ_MESSAGES, READ_BYTES)

    async def _long_line(self, session_id: str, first: ExportRead | None) -> AsyncIterator[bytes]:
        for _ in range(ATTEMPTS):
            if first is None:
                return  # deleted meanwhile
            with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
                try:
                    if not await self._spool(session_id, first, spool):
                        return
                except SessionChanged:
                    first = await self._read(session_id, 0)
                    continue
                spool.seek(0)
                while data := spool.read(SEND_BYTES):
                    yield data
                return
        raise BackendUnavailable(
            f'session {session_id!r} lost messages while it was read, {ATTEMPTS} times in a row; export again'
        )

    async def _spool(self, session_id: str, first: ExportRead, spool: 'tempfile.SpooledTemporaryFile[bytes]') -> bool:
        """Write the line of the session `first` read into `spool`; False when the session went meanwhile."""
        gaps, first_id, total = first.gaps, first.first_id, first.held
        spool.write(line_head(first.image))
        spool.write(joined(first))
        done = len(first.messages)
        while done < total:
            read = await self._read(session_id, ids.id_at(gaps, first_id, done - 1))
            if read is None:
                return False
            got = read.messages
            if not got or read.image.record.created_at != first.image.record.created_at:
                raise SessionChanged()
            count = min(len(got), total - done)
            expected = (ids.id_at(gaps, first_id, done), ids.id_at(gaps, first_id, done + count - 1))
            if (message_id(got[0]), message_id(got[count - 1])) != expected:
                raise SessionChanged()
            spool.write(b',')
            spool.write(join_newest(got[:count], count) if count < len(got) else joined(read))
            done += count
        spool.write(b']}\n')
        return True


def _groups(items: list[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while group := list(itertools.islice(iterator, size)):
        yield group
