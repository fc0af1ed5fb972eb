"""The metadata index on Chroma: a session record's `metadata.<key>` fields (`codec.index_fields`), which every write
of the record sets from the session's metadata, and which a filtered listing asks Chroma for.

Chroma merges the metadata a write gives into what a record holds (a field given as None is removed), so a write
that only sets the index fields (`reindex`) leaves the rest of the record as another write left it. Fields of keys
that are no longer indexed stay on records until `memsvc reindex` removes them; what they say is never trusted: a
filtered read checks every record Chroma finds against the session's metadata.
"""

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Final

from memsvc.models import to_micros
from memsvc.stores.base import ListCursor
from memsvc.stores.chroma.codec import (
    INDEX_FIELD,
    Meta,
    SessionRow,
    Where,
    index_clauses,
    index_fields,
    session_record_id,
    where,
)
from memsvc.stores.chroma.operations import Chroma, chunks
from memsvc.stores.index import Where as Filter
from memsvc.stores.index import matches

if TYPE_CHECKING:
    from memsvc.stores.chroma.store import ChromaStore

REINDEX_BATCH: Final = 500


class ChromaIndex:
    def __init__(self, store: 'ChromaStore') -> None:
        self._store = store
        self._chroma = store._chroma
        self._sessions = store._layout.sessions

    async def rows(self, tenant: str, after: ListCursor | None, filter: Filter) -> list[SessionRow]:
        """The session records after the listing position `after` that match `filter`, newest first (read whole and
        sorted here: Chroma cannot sort)."""
        clauses: list[Where] = [{'tenant': tenant}, *index_clauses(filter)]
        if after is not None:
            clauses.append({'updated_at': {'$lte': after[0]}})
        found = await self._chroma(Chroma.get, self._sessions, where=where(*clauses))
        rows = [SessionRow.from_metadata(meta) for meta in found.metadatas]
        if filter:
            rows = [row for row in rows if matches(row.record.metadata, filter)]
        if after is not None:  # tuple order: an earlier time, or the same time and a smaller id
            rows = [row for row in rows if (to_micros(row.record.updated_at), row.record.id) < after]
        rows.sort(key=lambda row: (to_micros(row.record.updated_at), row.record.id), reverse=True)
        return rows

    async def index_session(self, tenant: str, session_id: str) -> bool:
        """Runs holding the session's lock (`ChromaStore.index_session`)."""
        found = await self._chroma(Chroma.get, self._sessions, ids=[session_record_id(tenant, session_id)])
        if not found.metadatas:
            return False
        await self._write_fields(found.ids, found.metadatas)
        return True

    async def _write_fields(self, record_ids: Sequence[str], metadatas: Sequence[Meta]) -> None:
        """The index fields of these records (read as `metadatas`) written again, the stale ones removed."""
        indexed = self._store._indexed
        fields = [
            index_fields(str(meta['metadata']).encode(), indexed, [key for key in meta if key.startswith(INDEX_FIELD)])
            for meta in metadatas
        ]
        await self._chroma(Chroma.update, self._sessions, ids=record_ids, metadatas=fields)

    async def count(self, tenant: str) -> int:
        found = await self._chroma(Chroma.get, self._sessions, where={'tenant': tenant}, include=())
        return len(found.ids)

    async def reindex(self, tenant: str) -> AsyncIterator[int]:
        """The index fields of every session record of the tenant, in batches. Another process (a server) writing a
        session holds no lock of this one, so each batch is read again afterwards, and a session whose metadata
        changed meanwhile is indexed again."""
        found = await self._chroma(Chroma.get, self._sessions, where={'tenant': tenant}, include=())
        for batch in chunks(found.ids, REINDEX_BATCH):
            pending = list(batch)
            while pending:
                read = await self._chroma(Chroma.get, self._sessions, ids=pending)
                await self._write_fields(read.ids, read.metadatas)
                again = await self._chroma(Chroma.get, self._sessions, ids=read.ids)
                seen = {rid: meta['metadata'] for rid, meta in zip(read.ids, read.metadatas, strict=True)}
                pending = [
                    rid for rid, meta in zip(again.ids, again.metadatas, strict=True) if meta['metadata'] != seen[rid]
                ]
            yield len(batch)
