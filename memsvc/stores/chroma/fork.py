"""Forks on Chroma: the message records copied in chunks, then the session record written, which publishes them.

A session's messages are read only through its session record (`store.py`), so message records under a session id
that has no record yet are invisible to every read, listing and search. A fork into `<id>` therefore:

1. holds `<id>`'s lock, not the source's, whose writes go on (in this process, an append or create of `<id>` waits
   until the fork is done, then lands on the published fork); checks the Idempotency-Key's record, the source,
   `through_id`, that `<id>` is free and the tenant's session limit; and deletes any message records an earlier,
   interrupted fork of `<id>` left;
2. copies the source's message records `first_id .. through_id` in chunks of `CHUNK_RECORDS` (one `get` with their
   documents, metadata and embeddings, one `upsert` under `<id>`): the vectors are copied, nothing is embedded
   again. A chunk that comes back short means the source lost those messages: 409 `fork_source_changed`;
3. reads the source's record again (the same `created_at`: not deleted and made again; still holding `through_id`:
   not cleared or trimmed past it), and takes its metadata and summary from it;
4. writes the Idempotency-Key's record, then the session record: the one atomic step that publishes the fork.

A fork that fails deletes what it copied; one that stops (a crash) leaves message records under an id that has no
session record: invisible, and deleted by the next fork, create or first append of that id, or a DELETE of it
(Chroma has no TTL). Across memsvc processes sharing a Chroma server nothing here is atomic (as for every write on
Chroma, see `store.py`): a fork and a write of the same new id in two processes at once can mix.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from memsvc.errors import ForkSourceChanged, MessageNotFound, SessionExists, SessionNotFound
from memsvc.models import SessionRecord, StoredSession, fork_origin, json_array, to_micros
from memsvc.stores import gaps as ids
from memsvc.stores.base import Fork, Idempotency, summary_through
from memsvc.stores.chroma.codec import SessionRow, as_int, forked_records, join_message, message_record_id
from memsvc.stores.chroma.operations import Chroma

if TYPE_CHECKING:
    from memsvc.stores.chroma.store import ChromaStore

CHUNK_RECORDS: Final = 500
"""Message records per step: with 384 float32 each, about 0.8 MB of vectors per call."""


class ChromaForks:
    """`ChromaStore.fork_session`. `chunk_written` is a test hook, awaited after each chunk with the number written."""

    def __init__(self, store: 'ChromaStore') -> None:
        self._store = store
        self.chunk_written: Callable[[int], Awaitable[None]] | None = None

    async def fork(
        self, tenant: str, target: str, fork: Fork, idempotency: Idempotency | None, with_messages: bool
    ) -> StoredSession | None:
        """Runs holding `target`'s lock (`ChromaStore._locked`)."""
        store = self._store
        existing = await store._read(tenant, target)
        recorded = await store._recorded(tenant, target, idempotency)
        if (
            recorded is not None
            and existing is not None
            and to_micros(existing.record.created_at) == recorded.get('created_at')
        ):
            return await store._stored(tenant, existing, with_messages)
        if recorded is not None:
            raise SessionNotFound(target)  # the fork this key made was deleted since
        source = await store._read(tenant, fork.source)
        if source is None:
            return None
        through = fork.through_id
        if through is None:
            stored = source.count
            through = ids.id_at(source.gaps, source.first_id, stored - 1) if stored else None
        elif not source.holds(through):
            raise MessageNotFound(fork.source, through)
        if existing is not None:
            raise SessionExists(target)
        await store._check_room(tenant)
        await store._delete_messages(tenant, target)  # whatever an interrupted fork (or delete) of this id left
        try:
            copied = [] if through is None else await self._copy(tenant, source, target, through)
            return await self._publish(tenant, source, fork, through, copied, idempotency, with_messages)
        except Exception:
            await store._delete_messages(tenant, target)
            raise

    async def _copy(self, tenant: str, source: SessionRow, target: str, through: int) -> list[bytes]:
        store, layout, attempt = self._store, self._store._layout, uuid.uuid4().hex
        copied: list[bytes] = []
        wanted = list(source.stored_ids(source.first_id, through + 1))
        for start in range(0, len(wanted), CHUNK_RECORDS):
            seqs = wanted[start : start + CHUNK_RECORDS]
            found = await store._chroma(
                Chroma.get,
                layout.messages,
                ids=[message_record_id(tenant, source.record.id, seq) for seq in seqs],
                include=('metadatas', 'documents', 'embeddings'),
            )
            if len(found.ids) != len(seqs) or found.embeddings is None:
                raise ForkSourceChanged(source.record.id)
            order = sorted(range(len(found.ids)), key=lambda n: as_int(found.metadatas[n]['seq']))
            metadatas = [found.metadatas[n] for n in order]
            documents = [found.documents[n] or '' for n in order]
            records = forked_records(tenant, target, metadatas, attempt)
            await store._chroma(
                Chroma.upsert,
                layout.messages,
                ids=records.ids,
                embeddings=found.embeddings[order],
                documents=documents,
                metadatas=records.metadatas,
            )
            copied += [join_message(meta, document)[1] for meta, document in zip(metadatas, documents, strict=True)]
            if self.chunk_written is not None:
                await self.chunk_written(len(copied))
        return copied

    async def _publish(
        self,
        tenant: str,
        source: SessionRow,
        fork: Fork,
        through: int | None,
        copied: list[bytes],
        idempotency: Idempotency | None,
        with_messages: bool,
    ) -> StoredSession:
        store = self._store
        now = await store._read(tenant, fork.source)
        if now is None or now.record.created_at != source.record.created_at:
            raise ForkSourceChanged(fork.source)  # deleted (and perhaps made again)
        if through is not None and not now.holds(through):
            raise ForkSourceChanged(fork.source)  # cleared, truncated, or trimmed past through_id
        metadata = now.record.metadata if fork.metadata is None else fork.metadata
        summary = now.summary
        if through is None or (summary and summary_through(summary.encode()) > through):
            summary = ''
        origin = fork_origin(fork.source, through)
        record = SessionRecord(fork.target, fork.now, fork.now, metadata, 0, origin)
        gaps = tuple(gap for gap in source.gaps if through is not None and gap[0] < through)
        row = SessionRow(record, source.first_id if through is not None else 1, (through or 0) + 1, summary, gaps)
        await store._record(
            tenant, fork.target, idempotency, created_at=to_micros(fork.now), metadata=metadata.decode()
        )
        await store._write(tenant, row)
        return StoredSession(record, json_array(copied) if with_messages else b'[]')
