"""Export and import in the in-memory store (`memory.MemoryStore`; `stores/base.py` has the contract).

Every step runs without awaiting in the middle, so each read is atomic; an import builds its session's log out of
reach of every read, a run of messages per step with the event loop free in between, and publishes it in one step
that awaits nothing.
"""

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from memsvc.context import message_id
from memsvc.errors import SessionExists
from memsvc.models import SessionRecord
from memsvc.stores import gaps as ids
from memsvc.stores.base import ExportRead, SessionImage
from memsvc.stores.memory_log import MessageLog

if TYPE_CHECKING:
    from memsvc.stores.memory import MemoryStore

EXPORT_PAGE: Final = 1000


class MemoryTransfers:
    def __init__(self, store: 'MemoryStore') -> None:
        self._store = store

    async def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        listing = list(self._store._tenant(tenant).sorted_listing())  # the snapshot: (updated_at, id), ascending
        for end in range(len(listing), 0, -EXPORT_PAGE):
            yield [session_id for _, session_id in reversed(listing[max(end - EXPORT_PAGE, 0) : end])]

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        session = self._store._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        log = session.messages
        lo = ids.stored_below(session.gaps, session.first_id, session.next_id, after + 1)
        hi = min(log.chunk_end(lo, budget), lo + limit) if lo < len(log) else lo
        image = SessionImage(session.record(), session.next_id, session.summary)
        return ExportRead(image, session.first_id, session.gaps, len(log), log.page(lo, hi))

    @asynccontextmanager
    async def importing(self, tenant: str, image: SessionImage, *, replace: bool) -> AsyncIterator['MemoryImport']:
        yield MemoryImport(self._store, tenant, image, replace)


class MemoryImport:
    """The log being built; nothing reaches it until `publish` puts it in its session."""

    def __init__(self, store: 'MemoryStore', tenant: str, image: SessionImage, replace: bool) -> None:
        self._store, self._tenant, self._image, self._replace = store, tenant, image, replace
        self._session_id = image.record.id
        self._log = MessageLog()
        self._first = 0

    async def write(self, messages: list[bytes], records: list[int]) -> None:
        if not self._first and messages:
            self._first = message_id(messages[0])
        self._log.extend(messages, records)

    async def publish(self, gaps: ids.Gaps) -> None:
        image = self._image
        part = self._store._tenant(self._tenant)
        existing = part.sessions.get(self._session_id)
        if existing is not None and not self._replace:
            raise SessionExists(self._session_id)
        if existing is None:
            self._store._check_room(part)
        given = image.record
        version = 0 if existing is None else existing.version + 1
        record = SessionRecord(given.id, given.created_at, given.updated_at, given.metadata, version, given.forked_from)
        session = self._store._new(record)  # with its metadata index entries
        session.messages, session.next_id, session.gaps = self._log, image.next_id, gaps
        session.first_id = self._first or image.next_id
        session.summary = image.summary
        if existing is not None:
            part.remove(existing)
        part.add(session)
