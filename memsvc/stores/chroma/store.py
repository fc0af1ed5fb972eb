"""The `Store` contract on Chroma: messages stored one record each, with a vector, so that they can be searched.

The record layout is in `codec.py`; how calls reach Chroma, in `transport.py`.

The session record is the commit point. A session's messages are exactly the ids `first_id .. next_id - 1` but the
row's gaps (`stores.gaps`: ids deleted one by one or cut by a truncation), read by id (only stored ids are asked
for) and ordered by their stored sequence number, never by the order Chroma returns; clearing moves `first_id` to
`next_id`. Deleting a message or truncating commits on the session record (its gaps) first and then removes the
vectors, so search never finds a removed message; a vector an interrupted delete left is outside the stored ids,
and the next DELETE of that message (even one answering 404), a truncation or a clear removes it. An append writes
(upserts) the message records first and then the session record, so a failure in between leaves records outside the
range that no read or search returns and the next append overwrites. Delete and clear commit on the session record
first and then remove the message vectors; search returns only hits inside a live session's range, so an
interrupted delete never shows ghosts, and the next DELETE of the id (even one that answers 404) or its re-creation
removes what was left.

Atomicity: Chroma has no transactions or compare-and-set. Inside one process every write to a session holds an
asyncio lock of its own (per tenant and session), so all contract guarantees hold for one process. Across
processes nothing is atomic: two processes writing the same session at the same moment can overwrite each other
(both take the same message ids; last writer wins) or both create it. Embedded Chroma therefore refuses
`--workers` > 1 (two processes on one persistent directory also see inconsistent vector indexes). Server mode
allows several memsvc processes; they are safe as long as each session is written by one process at a time
(e.g. a load balancer with session affinity); otherwise use Redis for the history.

Versions and Idempotency-Keys are checked under the same lock. An idempotency record is written after the messages
and before the session record. A retry replays it only if the first attempt committed: the session's range
reaches past the recorded messages and the first of them carries the attempt's nonce (a later writer that took
those ids after a failed attempt left its own). Otherwise the retry writes again.

Nothing blocks the event loop: the embedding runs on the store's thread pool, Chroma calls go through the
transport. A write, once started, runs to its end even if its request is cancelled (`writes.Writes`).
"""

import asyncio
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import orjson

from memsvc.context import RESULT
from memsvc.errors import (
    BackendUnavailable,
    IdempotencyKeyReused,
    MessageNotFound,
    SessionFull,
    SessionLimitReached,
    SessionNotFound,
    SummaryNotFound,
    ThroughIdNotStored,
)
from memsvc.models import SearchHit, SessionRecord, StoredSession, from_micros, json_array, to_micros, utc_now, with_id
from memsvc.settings import Settings
from memsvc.stores import gaps as ids
from memsvc.stores.base import (
    Appended,
    CountedPage,
    ExportRead,
    Fork,
    Idempotency,
    ImportWriter,
    Limits,
    ListCursor,
    MessageRange,
    SessionImage,
    Summarized,
    Truncated,
    WindowRead,
    check_version,
    is_instruction,
    stored_kind,
)
from memsvc.stores.chroma.codec import (
    Layout,
    Meta,
    SessionRow,
    Where,
    as_int,
    idempotency_metadata,
    idempotency_record_id,
    join_message,
    message_record_id,
    message_records,
    placeholder,
    session_record_id,
    where,
)
from memsvc.stores.chroma.fork import ChromaForks
from memsvc.stores.chroma.index import ChromaIndex
from memsvc.stores.chroma.operations import IDS_PER_CALL, Chroma, chunks
from memsvc.stores.chroma.search import Search
from memsvc.stores.chroma.transfer import ChromaTransfers
from memsvc.stores.chroma.transport import Transport
from memsvc.stores.chroma.writes import Writes
from memsvc.stores.index import Where as Filter

if TYPE_CHECKING:
    from memsvc.embeddings import Embedder, Vectors

P = ParamSpec('P')
T = TypeVar('T')


class ChromaStore:
    """The transport, the embedder and the executor are the caller's (`open_store`)."""

    self_timed: frozenset[str] = frozenset()

    def __init__(
        self, transport: Transport, embedder: 'Embedder', executor: ThreadPoolExecutor, settings: Settings
    ) -> None:
        self._layout = Layout.for_prefix(settings.key_prefix)
        self._indexed = settings.indexed_keys()
        self._chroma = transport.run
        self._where = transport.where
        self._search = Search(transport, self._layout)
        self._embedder = embedder
        self._executor = executor
        self._limits = Limits.from_settings(settings)
        self._writes = Writes()
        self.forks = ChromaForks(self)
        self._transfers = ChromaTransfers(self)
        self.index = ChromaIndex(self)

    async def open(self) -> None:
        """Create (or find) the collections; raises `BackendUnavailable` naming the Chroma when it does not answer."""
        try:
            await self._chroma(Chroma.count, self._layout.sessions)
            await self._chroma(Chroma.count, self._layout.messages)
        except BackendUnavailable as exc:
            cause = exc.__cause__
            detail = ' '.join(str(cause).split()) or type(cause).__name__
            raise BackendUnavailable(f'{self._where} does not answer: {detail}') from None

    # --- running writes ----------------------------------------------------------------------

    async def _embed(self, texts: list[str]) -> 'Vectors':
        """On the store's thread pool: the embedding holds a core for a long time."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embedder.embed, texts)

    # --- records -----------------------------------------------------------------------------

    async def _read(self, tenant: str, session_id: str) -> SessionRow | None:
        found = await self._chroma(Chroma.get, self._layout.sessions, ids=[session_record_id(tenant, session_id)])
        return SessionRow.from_metadata(found.metadatas[0]) if found.metadatas else None

    async def _write(self, tenant: str, row: SessionRow) -> None:
        record_id = session_record_id(tenant, row.record.id)
        await self._chroma(
            Chroma.upsert,
            self._layout.sessions,
            ids=[record_id],
            embeddings=placeholder(record_id),
            metadatas=[row.metadata(tenant, self._indexed)],
        )

    async def _delete_messages(
        self, tenant: str, session_id: str, below: int | None = None, above: int | None = None
    ) -> None:
        clauses: list[Where] = [{'tenant': tenant}, {'session_id': session_id}]
        if below is not None:
            clauses.append({'seq': {'$lt': below}})
        if above is not None:
            clauses.append({'seq': {'$gt': above}})
        await self._chroma(Chroma.delete, self._layout.messages, where=where(*clauses))

    async def _counted_of(self, tenant: str, row: SessionRow, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """(id, message, record) of the messages with ids lo .. hi - 1 (clipped to the session's range), oldest
        first."""
        record_ids = [message_record_id(tenant, row.record.id, seq) for seq in row.stored_ids(lo, hi)]
        rows: list[tuple[int, bytes, int]] = []
        for chunk in chunks(record_ids):
            found = await self._chroma(Chroma.get, self._layout.messages, ids=chunk, include=('metadatas', 'documents'))
            rows.extend(join_message(meta, doc) for meta, doc in zip(found.metadatas, found.documents, strict=True))
        rows.sort(key=lambda row: row[0])
        return rows

    async def _messages_of(self, tenant: str, row: SessionRow, lo: int, hi: int) -> list[bytes]:
        """The messages with ids lo .. hi - 1 (clipped to the session's range), oldest first."""
        return [message for _, message, _ in await self._counted_of(tenant, row, lo, hi)]

    async def _trim_start(self, tenant: str, row: SessionRow, cut: int, first_new: int, kinds: list[int]) -> int:
        """The first id to keep when trimming below `cut` (a stored id): past the tool messages from `cut` on, whose
        call goes. `kinds` are those of the messages being appended (ids from `first_new`); older ones are read by
        role."""
        while cut < first_new:
            seqs = list(itertools.islice(row.stored_ids(cut, first_new), 16))
            if not seqs:
                cut = first_new
                break
            record_ids = [message_record_id(tenant, row.record.id, seq) for seq in seqs]
            found = await self._chroma(Chroma.get, self._layout.messages, ids=record_ids)
            roles = {as_int(meta['seq']): meta['role'] for meta in found.metadatas}
            for seq in seqs:
                if roles.get(seq) != 'tool':
                    return seq
            cut = seqs[-1] + 1
        while cut - first_new < len(kinds) and kinds[cut - first_new] == RESULT:
            cut += 1
        return cut

    async def _stored(self, tenant: str, row: SessionRow, with_messages: bool) -> StoredSession:
        if not with_messages:
            return StoredSession(row.record, b'[]')
        return StoredSession(row.record, json_array(await self._messages_of(tenant, row, row.first_id, row.next_id)))

    async def _check_room(self, tenant: str) -> None:
        """Before a write that creates a session: the tenant's session limit (counted, so only when one is set)."""
        if not self._limits.max_sessions:
            return
        found = await self._chroma(Chroma.get, self._layout.sessions, where={'tenant': tenant}, include=())
        if len(found.ids) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)

    async def _recorded(self, tenant: str, session_id: str, idempotency: Idempotency | None) -> Meta | None:
        """The unexpired record of this Idempotency-Key; `IdempotencyKeyReused` if it was for another request."""
        if idempotency is None:
            return None
        record_id = idempotency_record_id(tenant, session_id, idempotency)
        found = await self._chroma(Chroma.get, self._layout.sessions, ids=[record_id])
        if not found.metadatas or as_int(found.metadatas[0]['expires']) < to_micros(utc_now()):
            return None
        if found.metadatas[0]['fingerprint'] != idempotency.fingerprint:
            raise IdempotencyKeyReused()
        return found.metadatas[0]

    async def _record(self, tenant: str, session_id: str, idempotency: Idempotency | None, **result: str | int) -> None:
        if idempotency is None:
            return
        record_id = idempotency_record_id(tenant, session_id, idempotency)
        await self._chroma(
            Chroma.upsert,
            self._layout.sessions,
            ids=[record_id],
            embeddings=placeholder(record_id),
            metadatas=[idempotency_metadata(tenant, session_id, idempotency, result)],
        )

    async def _committed(self, tenant: str, row: SessionRow, first: int, count: int, attempt: str) -> bool:
        """Whether the attempt that recorded messages first .. first + count - 1 reached its commit."""
        if row.next_id < first + count:
            return False
        probe = message_record_id(tenant, row.record.id, first)
        found = await self._chroma(Chroma.get, self._layout.messages, ids=[probe])
        return bool(found.metadatas) and found.metadatas[0].get('attempt') == attempt

    # --- the Store contract ------------------------------------------------------------------

    async def ping(self) -> None:
        await self._chroma(Chroma.heartbeat)

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        return await self._writes.locked(tenant, record.id, self._create_session, record, idempotency)

    async def _create_session(
        self, tenant: str, session_id: str, record: SessionRecord, idempotency: Idempotency | None
    ) -> SessionRecord | None:
        existing = await self._read(tenant, session_id)
        recorded = await self._recorded(tenant, session_id, idempotency)
        committed = existing is not None and to_micros(existing.record.created_at) == (recorded or {}).get('created_at')
        if recorded is not None and committed:  # the create this key recorded happened: answer as it did
            created_at = from_micros(as_int(recorded['created_at']))
            return SessionRecord(session_id, created_at, created_at, str(recorded['metadata']).encode(), 0)
        if existing is not None:
            return None
        await self._check_room(tenant)
        await self._delete_messages(tenant, session_id)  # whatever an interrupted delete left behind
        await self._record(
            tenant, session_id, idempotency, created_at=to_micros(record.created_at), metadata=record.metadata.decode()
        )
        await self._write(tenant, SessionRow.new(record))
        return record

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        row = await self._read(tenant, session_id)
        return None if row is None else await self._stored(tenant, row, with_messages)

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool, where: Filter = ()
    ) -> tuple[list[StoredSession], bool]:
        """Reads the metadata of the tenant's sessions up to the cursor (with a filter, of those Chroma finds by the
        metadata index fields, `codec.index_fields`) and sorts them here: Chroma cannot sort."""
        rows = await self.index.rows(tenant, after, where)
        page = [await self._stored(tenant, row, with_messages) for row in rows[:limit]]
        return page, len(rows) > limit

    async def index_session(self, tenant: str, session_id: str) -> bool:
        return await self._writes.locked(tenant, session_id, self.index.index_session)

    async def count_sessions(self, tenant: str) -> int:
        return await self.index.count(tenant)

    def reindex(self, tenant: str) -> AsyncIterator[int]:
        return self.index.reindex(tenant)

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        return await self._writes.locked(tenant, session_id, self._update_metadata, apply, now, expected_version)

    async def _update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        expected_version: int | None,
    ) -> SessionRecord | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        check_version(session_id, row.record.version, expected_version)
        updated = row.bumped(now, metadata=apply(row.record.metadata))
        await self._write(tenant, updated)
        return updated.record

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        return await self._writes.locked(tenant, session_id, self._delete_session, expected_version)

    async def erase_session(self, tenant: str, session_id: str) -> bool:
        return await self._writes.locked(tenant, session_id, self._erase_session)

    async def _erase_session(self, tenant: str, session_id: str) -> bool:
        """A delete in the other order: the session record, which the index finds, goes last, so that an erasure
        stopped half-way leaves the session listed under its filter, and the same erasure again finishes it."""
        row = await self._read(tenant, session_id)
        await self._delete_messages(tenant, session_id)
        keys = where({'idem_tenant': tenant}, {'idem_session': session_id})
        await self._chroma(Chroma.delete, self._layout.sessions, where=keys)
        if row is not None:
            await self._chroma(Chroma.delete, self._layout.sessions, ids=[session_record_id(tenant, session_id)])
        return row is not None

    async def _delete_session(self, tenant: str, session_id: str, expected_version: int | None) -> bool:
        row = await self._read(tenant, session_id)
        if row is not None:
            check_version(session_id, row.record.version, expected_version)
            await self._chroma(Chroma.delete, self._layout.sessions, ids=[session_record_id(tenant, session_id)])
        await self._delete_messages(tenant, session_id)  # also completes an earlier, interrupted delete
        keys = where({'idem_tenant': tenant}, {'idem_session': session_id})
        await self._chroma(Chroma.delete, self._layout.sessions, where=keys)
        return row is not None

    async def append_messages(
        self,
        tenant: str,
        session_id: str,
        bodies: list[bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
        records: Sequence[int] | None = None,
    ) -> Appended:
        """Embeds first (the slow part, outside the session's lock), then writes the messages and the session. Once
        started it runs to its end even if the request is cancelled (a deadline, a client gone): the embedding is
        not wasted, and a retry with the same Idempotency-Key finds the result."""

        async def embed_then_write() -> Appended:
            vectors = await self._embed([orjson.loads(body)['content'] for body in bodies])
            counts = list(records) if records is not None else [0] * len(bodies)
            return await self._writes.locked(
                tenant, session_id, self._append_messages, bodies, counts, vectors, now, expected_version, idempotency
            )

        return await self._writes.shielded(embed_then_write())

    async def _append_messages(
        self,
        tenant: str,
        session_id: str,
        bodies: list[bytes],
        counts: list[int],
        vectors: 'Vectors',
        now: datetime,
        expected_version: int | None,
        idempotency: Idempotency | None,
    ) -> Appended:
        row = await self._read(tenant, session_id)
        recorded = await self._recorded(tenant, session_id, idempotency)
        if recorded is not None and row is not None:
            first, count = as_int(recorded['first_id']), as_int(recorded['count'])
            if await self._committed(tenant, row, first, count, str(recorded['attempt'])):
                replayed = await self._messages_of(tenant, row, first, first + count)
                return Appended(replayed, as_int(recorded['version']))
        check_version(session_id, None if row is None else row.record.version, expected_version)
        if row is None:
            await self._check_room(tenant)
            await self._delete_messages(tenant, session_id)  # whatever an interrupted delete left behind
            row = SessionRow.new(
                SessionRecord(id=session_id, created_at=now, updated_at=now, metadata=b'{}', version=0)
            )
        limits = self._limits
        if limits.reject_full and row.count + len(bodies) > limits.max_messages > 0:
            raise SessionFull(session_id, limits.max_messages)
        first_new, attempt = row.next_id, uuid.uuid4().hex
        stored = [with_id(seq, body) for seq, body in enumerate(bodies, first_new)]
        records = message_records(
            tenant, session_id, range(first_new, first_new + len(stored)), stored, attempt, counts
        )
        for start in range(0, len(stored), IDS_PER_CALL):
            end = start + IDS_PER_CALL
            await self._chroma(
                Chroma.upsert,
                self._layout.messages,
                ids=records.ids[start:end],
                embeddings=vectors[start:end],
                documents=records.documents[start:end],
                metadatas=records.metadatas[start:end],
            )
        next_id = first_new + len(stored)
        first_id, gaps = row.first_id, row.gaps
        if limits.max_messages and row.count + len(stored) > limits.max_messages:
            kinds = [stored_kind(message, count) for message, count in zip(stored, counts, strict=True)]
            cut = ids.id_at(gaps, first_id, row.count + len(stored) - limits.max_messages)
            first_id = await self._trim_start(tenant, row, cut, first_new, kinds)
            gaps = ids.trimmed(gaps, first_id)
        updated = row.bumped(now, first_id=first_id, next_id=next_id, gaps=gaps)
        version = updated.record.version
        await self._record(
            tenant, session_id, idempotency, first_id=first_new, count=len(stored), version=version, attempt=attempt
        )
        await self._write(tenant, updated)
        if first_id > row.first_id:
            await self._delete_messages(tenant, session_id, below=first_id)
        return Appended(stored, version)

    async def fork_session(
        self, tenant: str, fork: Fork, *, idempotency: Idempotency | None = None, with_messages: bool = True
    ) -> StoredSession | None:
        """See `fork.py`: under the new id's lock, run to its end like every write."""
        return await self._writes.locked(tenant, fork.target, self.forks.fork, fork, idempotency, with_messages)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        return json_array(await self._messages_of(tenant, row, *row.selected(selection)))

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        counted = await self._counted_of(tenant, row, *row.selected(selection))
        return CountedPage([(message, count) for _, message, count in counted], row.count)

    async def read_window(self, tenant: str, session_id: str, limit: int | None, head: int) -> WindowRead | None:
        """Not atomic: the session record, then the newest messages and the head (Chroma has no transactions)."""
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        newest = await self._counted_of(tenant, row, *row.selected(MessageRange(limit=limit)))
        oldest, run = newest[0][0] if newest else 0, []
        if len(newest) < row.count:
            first = await self._counted_of(tenant, row, *row.selected(MessageRange(limit=max(head, 1), after=0)))
            oldest = first[0][0] if first else oldest
            for entry in first[:head]:
                if not is_instruction(entry[1], entry[2]):
                    break
                run.append(entry)
        return WindowRead(
            [message for _, message, _ in newest],
            [value for _, _, value in newest],
            row.count,
            oldest,
            [message for _, message, _ in run],
            [value for _, _, value in run],
            row.summary.encode() if row.summary else None,
        )

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        return await self._writes.locked(tenant, session_id, self._clear_messages, now, expected_version)

    async def _clear_messages(
        self, tenant: str, session_id: str, now: datetime, expected_version: int | None
    ) -> int | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        check_version(session_id, row.record.version, expected_version)
        cleared = row.bumped(now, first_id=row.next_id, summary='', gaps=())
        await self._write(tenant, cleared)
        await self._delete_messages(tenant, session_id, below=row.next_id)
        return cleared.record.version

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        return await self._writes.locked(tenant, session_id, self._delete_message, message_id, now, expected_version)

    async def _delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, expected_version: int | None
    ) -> int | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        check_version(session_id, row.record.version, expected_version)
        record_id = message_record_id(tenant, session_id, message_id)
        if not row.holds(message_id):
            if row.first_id <= message_id < row.next_id:  # a gap: whatever an interrupted delete left behind
                await self._chroma(Chroma.delete, self._layout.messages, ids=[record_id])
            raise MessageNotFound(session_id, message_id)
        first_id, gaps = ids.deleted(row.gaps, row.first_id, message_id)
        updated = row.bumped(now, first_id=first_id, gaps=gaps)
        await self._write(tenant, updated)
        await self._chroma(Chroma.delete, self._layout.messages, ids=[record_id])
        return updated.record.version

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, *, expected_version: int | None = None
    ) -> Truncated | None:
        return await self._writes.locked(tenant, session_id, self._truncate_messages, after, now, expected_version)

    async def _truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, expected_version: int | None
    ) -> Truncated | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        check_version(session_id, row.record.version, expected_version)
        removed = row.count - ids.stored_below(row.gaps, row.first_id, row.next_id, after + 1)
        first_id, gaps = ids.truncated(row.gaps, row.first_id, row.next_id, after)
        covered = bool(row.summary) and orjson.loads(row.summary)['through_id'] > after
        updated = row.bumped(now, first_id=first_id, gaps=gaps, summary='' if covered else None)
        await self._write(tenant, updated)
        await self._delete_messages(tenant, session_id, above=after)  # also what an interrupted one left
        return Truncated(removed, updated.record.version)

    async def set_summary(
        self,
        tenant: str,
        session_id: str,
        summary: bytes,
        through_id: int,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        return await self._writes.locked(
            tenant, session_id, self._write_summary, summary, through_id, now, expected_version, idempotency
        )

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        return await self._writes.locked(
            tenant, session_id, self._write_summary, b'', None, now, expected_version, idempotency
        )

    async def _write_summary(
        self,
        tenant: str,
        session_id: str,
        summary: bytes,
        through_id: int | None,
        now: datetime,
        expected_version: int | None,
        idempotency: Idempotency | None,
    ) -> Summarized | None:
        """Set (`through_id` given) or delete the summary. The Idempotency-Key's record is written after the session
        record: a write interrupted between the two is written again by its retry, which sets the same summary."""
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        recorded = await self._recorded(tenant, session_id, idempotency)
        if recorded is not None:
            return Summarized(str(recorded['summary']).encode(), as_int(recorded['version']))
        check_version(session_id, row.record.version, expected_version)
        if through_id is None:
            if not row.summary:
                raise SummaryNotFound(session_id)
        elif not row.holds(through_id):
            raise ThroughIdNotStored(session_id, through_id)
        updated = row.bumped(now, summary=summary.decode())
        await self._write(tenant, updated)
        await self._record(tenant, session_id, idempotency, summary=summary.decode(), version=updated.record.version)
        return Summarized(summary, updated.record.version)

    async def get_summary(self, tenant: str, session_id: str) -> bytes | None:
        row = await self._read(tenant, session_id)
        if row is None:
            return None
        if not row.summary:
            raise SummaryNotFound(session_id)
        return row.summary.encode()

    def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        """See `transfer.py`."""
        return self._transfers.export_ids(tenant)

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        return await self._transfers.read_export(tenant, session_id, after, limit, budget)

    def importing(
        self, tenant: str, image: SessionImage, *, replace: bool
    ) -> AbstractAsyncContextManager[ImportWriter]:
        return self._transfers.importing(tenant, image, replace=replace)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        """See `search.py`. An unknown `session_id` raises `SessionNotFound`, so that searching a session that does
        not exist is a 404 like every other session route."""
        row = None
        if session_id is not None:
            row = await self._read(tenant, session_id)
            if row is None:
                raise SessionNotFound(session_id)
        [vector] = await self._embed([query])
        return await self._search.search(tenant, vector, limit=limit, session=row, role=role)
