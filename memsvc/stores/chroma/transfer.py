"""Export and import on Chroma (`store.ChromaStore`; `stores/base.py` has the contract).

Export: `export_ids` reads the tenant's session records once, as the listing does (Chroma cannot sort), and keeps
their (updated_at, id) alone, sorted newest first: the snapshot. `read_export` reads the session record, then its
messages by id: two calls, not one atomic step (Chroma has no transactions); the exporter's check of the ids it gets
catches a message that went in between (`memsvc.export`).

Import, under the session's lock in this process for the whole import (`writes.Writes.held`), as every write here:

- a session that does not exist: its message records (each embedded, as an append embeds it) are written under its
  id, where no read, listing or search finds them until the session record is written, the commit point (as a fork
  does, `fork.py`); an import that fails deletes them;
- a session that exists and is replaced: its records are written under a staging id, `<id>~import` (no session id
  holds a `~`), invisible too; the publish then deletes the old session (its record, messages and idempotency records),
  copies the staged records under the id (vectors and all: nothing is embedded twice), writes the session record and
  deletes the staged ones. A failure before the publish leaves the old session as it was; one during it (Chroma has no
  transactions) leaves the id without a session: import the line again.
"""

import contextlib
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Final

import orjson

from memsvc.context import message_id
from memsvc.errors import SessionExists
from memsvc.models import SessionRecord
from memsvc.stores import gaps as ids
from memsvc.stores.base import ExportRead, MessageRange, SessionImage
from memsvc.stores.chroma.codec import (
    SessionRow,
    forked_records,
    message_record_id,
    message_records,
)
from memsvc.stores.chroma.operations import IDS_PER_CALL, Chroma

if TYPE_CHECKING:
    from memsvc.stores.chroma.store import ChromaStore

EXPORT_PAGE: Final = 500
READ_RECORDS: Final = 500
"""Most message records one export read takes (its `budget` is not used: records are read by id)."""
STAGED: Final = '~import'


class ChromaTransfers:
    def __init__(self, store: 'ChromaStore') -> None:
        self._store = store

    async def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        store = self._store
        found = await store._chroma(Chroma.get, store._layout.sessions, where={'tenant': tenant})
        order = sorted(
            ((int(str(meta['updated_at'])), str(meta['session_id'])) for meta in found.metadatas), reverse=True
        )
        del found
        for start in range(0, len(order), EXPORT_PAGE):
            yield [session_id for _, session_id in order[start : start + EXPORT_PAGE]]

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        store = self._store
        row = await store._read(tenant, session_id)
        if row is None:
            return None
        messages: list[bytes] = []
        if limit:
            lo, hi = row.selected(MessageRange(limit=min(limit, READ_RECORDS), after=after))
            messages = await store._messages_of(tenant, row, lo, hi)
        image = SessionImage(row.record, row.next_id, row.summary.encode())
        return ExportRead(image, row.first_id, row.gaps, row.count, messages)

    @contextlib.asynccontextmanager
    async def importing(self, tenant: str, image: SessionImage, *, replace: bool) -> AsyncIterator['ChromaImport']:
        store, session_id = self._store, image.record.id
        async with store._writes.held(tenant, session_id):
            staged = await store._read(tenant, session_id) is not None
            writer = ChromaImport(store, tenant, image, replace, staged)
            try:
                yield writer
            finally:
                if not writer.published:
                    await store._writes.shielded(store._delete_messages(tenant, writer.into))


class ChromaImport:
    def __init__(self, store: 'ChromaStore', tenant: str, image: SessionImage, replace: bool, staged: bool) -> None:
        self._store, self._tenant, self._image, self._replace, self._staged = store, tenant, image, replace, staged
        self._session_id = image.record.id
        self.into = self._session_id + STAGED if staged else self._session_id
        self._attempt = uuid.uuid4().hex
        self._first = 0
        self.published = False

    async def write(self, messages: list[bytes], records: list[int]) -> None:
        store = self._store
        if not self._first and messages:
            self._first = message_id(messages[0])
        vectors = await store._embed([orjson.loads(message)['content'] for message in messages])
        seqs = [message_id(message) for message in messages]
        written = message_records(self._tenant, self.into, seqs, messages, self._attempt, records)
        for start in range(0, len(messages), IDS_PER_CALL):
            end = start + IDS_PER_CALL
            await store._chroma(
                Chroma.upsert,
                store._layout.messages,
                ids=written.ids[start:end],
                embeddings=vectors[start:end],
                documents=written.documents[start:end],
                metadatas=written.metadatas[start:end],
            )

    async def publish(self, gaps: ids.Gaps) -> None:
        store, tenant, image, session_id = self._store, self._tenant, self._image, self._session_id
        row = await store._read(tenant, session_id)
        if row is not None and not self._replace:
            raise SessionExists(session_id)
        if row is None:
            await store._check_room(tenant)
        first = self._first or image.next_id
        if self._staged:
            if row is not None:
                await store._delete_session(tenant, session_id, None)
            await self._copy(ids.stored_ids(gaps, first, image.next_id))
        given = image.record
        version = 0 if row is None else row.record.version + 1
        record = SessionRecord(given.id, given.created_at, given.updated_at, given.metadata, version, given.forked_from)
        await store._write(tenant, SessionRow(record, first, image.next_id, image.summary.decode(), gaps))
        self.published = True
        if self._staged:
            await store._delete_messages(tenant, self.into)

    async def _copy(self, seqs: Iterable[int]) -> None:
        """The staged records, under the session's id."""
        store, tenant, remaining = self._store, self._tenant, iter(seqs)
        while part := list(itertools.islice(remaining, READ_RECORDS)):
            found = await store._chroma(
                Chroma.get,
                store._layout.messages,
                ids=[message_record_id(tenant, self.into, seq) for seq in part],
                include=('metadatas', 'documents', 'embeddings'),
            )
            assert found.embeddings is not None
            copies = forked_records(tenant, self._session_id, found.metadatas, self._attempt)
            await store._chroma(
                Chroma.upsert,
                store._layout.messages,
                ids=copies.ids,
                embeddings=found.embeddings,
                documents=[document or '' for document in found.documents],
                metadatas=copies.metadatas,
            )
