"""The embedded in-memory store: the reference implementation of the `Store` contract.

Not persistent, and one process only. Everything runs on the event loop without awaiting in the
middle of a change, so every method is atomic by construction (a fork copies in steps into a log nothing else
can reach, and publishes it in one step that awaits nothing). A session's messages are kept as the
bytes they were encoded to, in a `MessageLog`; their ids are `first_id` (the id of the log's first message) to
`next_id - 1` minus the session's `gaps` (`stores.gaps`: the ids deleted one by one or cut by a truncation),
so reads by id or from the end are slices. The gaps are an empty tuple for a session that never lost a
message in the middle, and consulted only when they are not: ids map to positions by arithmetic, as they did
before messages could be deleted. A deleted message leaves the log (its bytes and its end offset), shifting
the shorter side of the log, so that the log only ever holds messages and any run of them is still one slice.
A tenant's sessions, their listing (newest first), their metadata index and the idempotency records of their
writes are a `memory_tenant.Tenant`.

What is held is kept out of the way of Python's cyclic garbage collector, whose full passes visit every
object a tracked container refers to, and come each time the tracked objects have grown by a quarter:
a session is two tracked objects (`Session`, `MessageLog`), whatever it holds, so a pass costs per session,
not per message (a list of bytes per session would have the pass read the header of every message,
a pause that shows in the tail latency of every request).
"""

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import orjson

from memsvc.context import message_id
from memsvc.errors import (
    ForkSourceChanged,
    MessageNotFound,
    NotSupported,
    SessionExists,
    SessionFull,
    SessionLimitReached,
    SessionNotFound,
    SummaryNotFound,
    ThroughIdNotStored,
)
from memsvc.models import SearchHit, SessionRecord, StoredSession, fork_origin, with_id
from memsvc.stores import gaps as ids
from memsvc.stores import index
from memsvc.stores.base import (
    Appended,
    CountedPage,
    ExportRead,
    Fork,
    ForkHook,
    Idempotency,
    ImportWriter,
    Limits,
    ListCursor,
    MessageRange,
    SessionImage,
    Summarized,
    Truncated,
    WindowRead,
    is_instruction,
    summary_through,
)
from memsvc.stores.index import Where
from memsvc.stores.memory_log import LogCopy, MessageLog
from memsvc.stores.memory_tenant import Session, Tenant, check_session_version, positions, stored_below
from memsvc.stores.memory_transfer import MemoryTransfers

FORK_CHUNK_BYTES = 1024 * 1024
"""The most bytes of messages one step of a fork copies (at least one message)."""


def _summary_covers(summary: bytes, after: int) -> bool:
    """Whether a summary covers a message above `after` (one a truncation after `after` removes)."""
    return bool(summary) and orjson.loads(summary)['through_id'] > after


class MemoryStore:
    self_timed: frozenset[str] = frozenset()

    def __init__(self, limits: Limits | None = None, indexed: Sequence[str] = ('user_id',)) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._indexed = tuple(indexed)
        self._limits = limits or Limits()
        self._max_messages = self._limits.max_messages
        self.forks = ForkHook()
        self._transfers = MemoryTransfers(self)

    def _tenant(self, tenant: str) -> Tenant:
        part = self._tenants.get(tenant)
        if part is None:
            part = self._tenants[tenant] = Tenant()
        return part

    async def ping(self) -> None:
        return None

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        part = self._tenant(tenant)
        replayed = part.replay(record.id, idempotency)
        if isinstance(replayed, SessionRecord):
            return replayed
        if record.id in part.sessions:
            return None
        self._check_room(part)
        part.add(self._new(record))
        part.record(record.id, idempotency, record)
        return record

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        return self._stored(session, with_messages)

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool, where: Where = ()
    ) -> tuple[list[StoredSession], bool]:
        part = self._tenant(tenant)
        listing = part.sorted_listing()
        if where:
            found = list(itertools.islice(part.matching(where, after), limit + 1))
            return [self._stored(session, with_messages) for session in found[:limit]], len(found) > limit
        end = len(listing) if after is None else listing.bisect_left(after)  # the page ends before `after`
        start = max(end - limit, 0)
        sessions = part.sessions
        return [self._stored(sessions[sid], with_messages) for _, sid in reversed(listing[start:end])], start > 0

    async def index_session(self, tenant: str, session_id: str) -> bool:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return False
        part.reindex(session, index.entries(session.metadata, self._indexed))
        return True

    async def count_sessions(self, tenant: str) -> int:
        return len(self._tenant(tenant).sessions)

    async def reindex(self, tenant: str) -> AsyncIterator[int]:
        """In one step: nothing here outlives the process, so `memsvc reindex` has nothing to do here."""
        part = self._tenant(tenant)
        for session in part.sessions.values():
            part.reindex(session, index.entries(session.metadata, self._indexed))
        yield len(part.sessions)

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        session.metadata = apply(session.metadata)
        part.reindex(session, index.entries(session.metadata, self._indexed))
        part.touch(session, now)
        return session.record()

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return False
        check_session_version(session_id, session, expected_version)
        part.remove(session)
        return True

    async def erase_session(self, tenant: str, session_id: str) -> bool:
        part = self._tenant(tenant)
        part.forget(session_id)
        session = part.sessions.get(session_id)
        if session is None:
            return False
        part.remove(session)
        return True

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
        part = self._tenant(tenant)
        replayed = part.replay(session_id, idempotency)
        if isinstance(replayed, Appended):
            return replayed
        session = part.sessions.get(session_id)
        check_session_version(session_id, session, expected_version)
        held = 0 if session is None else len(session.messages)
        if self._limits.reject_full and held + len(bodies) > self._max_messages > 0:
            raise SessionFull(session_id, self._max_messages)
        if session is None:
            self._check_room(part)
            session = Session.new(SessionRecord(session_id, now, now, b'{}', 0))
            part.add(session)
        stored = [with_id(session.next_id + i, body) for i, body in enumerate(bodies)]
        session.messages.extend(stored, records)
        session.next_id += len(stored)
        excess = len(session.messages) - self._max_messages
        if self._max_messages and excess > 0:
            excess = session.messages.trim_count(excess)
            session.messages.drop_oldest(excess)
            if session.gaps:
                log = session.messages
                session.first_id = message_id(log.message(0)) if len(log) else session.next_id
                session.gaps = ids.trimmed(session.gaps, session.first_id)
            else:
                session.first_id += excess
        part.touch(session, now)
        appended = Appended(stored, session.version)
        part.record(session_id, idempotency, appended)
        return appended

    async def fork_session(
        self, tenant: str, fork: Fork, *, idempotency: Idempotency | None = None, with_messages: bool = True
    ) -> StoredSession | None:
        """The copy is made in steps of at most `FORK_CHUNK_BYTES` (`LogCopy`), between which the loop runs other
        requests, into a log that nothing else can reach; one synchronous step then checks again and publishes it.
        (One synchronous copy of 100,000 messages held the loop for 30-170 ms here; in steps, the longest is the
        first, which allocates the copy's buffer, about 10 ms for 19 MB, and the others take about 0.6 ms.) A write
        of the new id meanwhile wins (the fork answers 409); messages of the source not yet copied must not go
        meanwhile, and the source must still be the same session holding `through_id` at the end (else 409
        `fork_source_changed`); appends to it do not matter."""
        part = self._tenant(tenant)
        if isinstance(part.replay(fork.target, idempotency), SessionRecord):
            return self._replayed(part, fork.target, with_messages)
        source = part.sessions.get(fork.source)
        if source is None:
            return None
        held, first, gaps = len(source.messages), source.first_id, source.gaps
        through = fork.through_id
        if through is None:
            through = ids.id_at(gaps, first, held - 1) if held else None
        elif not ids.holds(gaps, first, source.next_id, through):
            raise MessageNotFound(fork.source, through)
        if fork.target in part.sessions:
            raise SessionExists(fork.target)
        self._check_room(part)
        copy = MessageLog() if through is None else await self._copy(part, source, through)
        # the publishing step: nothing awaited from here on
        if isinstance(part.replay(fork.target, idempotency), SessionRecord):
            return self._replayed(part, fork.target, with_messages)
        if part.sessions.get(fork.source) is not source or (
            through is not None and not ids.holds(source.gaps, source.first_id, source.next_id, through)
        ):
            raise ForkSourceChanged(fork.source)
        if fork.target in part.sessions:
            raise SessionExists(fork.target)
        self._check_room(part)
        metadata = source.metadata if fork.metadata is None else fork.metadata
        record = SessionRecord(fork.target, fork.now, fork.now, metadata, 0, fork_origin(fork.source, through))
        session = self._new(record)
        if through is not None:
            session.messages, session.first_id, session.next_id = copy, first, through + 1
            session.gaps = tuple(gap for gap in gaps if gap[0] < through)
            if source.summary and summary_through(source.summary) <= through:
                session.summary = source.summary
        part.add(session)
        part.record(fork.target, idempotency, record)
        return self._stored(session, with_messages)

    async def _copy(self, part: Tenant, source: Session, through: int) -> MessageLog:
        """The source's messages up to `through`, copied step by step into a new log. Each step copies the run of
        messages that holds the next ids expected (as stored when the fork began), found by id in the log as it is
        now, and checks their first and last ids: a message not yet copied that went meanwhile fails the fork."""
        first, gaps, source_id = source.first_id, source.gaps, source.id
        total = ids.stored_below(gaps, first, source.next_id, through + 1)
        log = source.messages
        copy = LogCopy(log.ends[total - 1] - log.dropped)
        while len(copy.log) < total:
            if part.sessions.get(source_id) is not source:
                raise ForkSourceChanged(source_id)
            log, copied = source.messages, len(copy.log)
            wanted = ids.id_at(gaps, first, copied)
            lo = stored_below(source, wanted)
            hi = min(log.chunk_end(lo, FORK_CHUNK_BYTES), lo + total - copied)
            last = ids.id_at(gaps, first, copied + hi - lo - 1)
            if hi > len(log) or message_id(log.message(lo)) != wanted or message_id(log.message(hi - 1)) != last:
                raise ForkSourceChanged(source_id)
            copy.add(log, lo, hi)
            if self.forks.chunk_written is not None:
                await self.forks.chunk_written(len(copy.log))
            if len(copy.log) < total:
                await asyncio.sleep(0)
        return copy.done()

    def _replayed(self, part: Tenant, session_id: str, with_messages: bool) -> StoredSession:
        session = part.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return self._stored(session, with_messages)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        return session.messages.json_array(*positions(session, selection))

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        log = session.messages
        lo, hi = positions(session, selection)
        return CountedPage([(log.message(n), log.records[n]) for n in range(lo, hi)], len(log))

    async def read_window(self, tenant: str, session_id: str, limit: int | None, head: int) -> WindowRead | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        log = session.messages
        count = len(log)
        lo = 0 if limit is None or limit >= count else count - limit
        oldest = session.first_id if count else 0
        summary = session.summary or None
        if not lo:  # every message: no run to read apart
            return WindowRead(log.page(0, count), log.records[:], count, oldest, (), (), summary)
        run, records = 0, log.records
        while run < min(head, count) and is_instruction(log.message(run), records[run]):
            run += 1
        leading = [log.message(n) for n in range(run)]
        return WindowRead(log.page(lo, count), records[lo:], count, oldest, leading, records[:run], summary)

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        session.messages = MessageLog()
        session.first_id = session.next_id
        session.gaps = ()
        session.summary = b''
        part.touch(session, now)
        return session.version

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        if not ids.holds(session.gaps, session.first_id, session.next_id, message_id):
            raise MessageNotFound(session_id, message_id)
        session.messages.remove(stored_below(session, message_id))
        session.first_id, session.gaps = ids.deleted(session.gaps, session.first_id, message_id)
        part.touch(session, now)
        return session.version

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, *, expected_version: int | None = None
    ) -> Truncated | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        log = session.messages
        keep = stored_below(session, after + 1)
        removed = len(log) - keep
        if keep == 0:
            session.messages = MessageLog()
        elif removed:
            log.truncate(keep)
        session.first_id, session.gaps = ids.truncated(session.gaps, session.first_id, session.next_id, after)
        if _summary_covers(session.summary, after):
            session.summary = b''
        part.touch(session, now)
        return Truncated(removed, session.version)

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
        part = self._tenant(tenant)
        replayed = part.replay(session_id, idempotency)
        if isinstance(replayed, Summarized):
            return replayed
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        if not ids.holds(session.gaps, session.first_id, session.next_id, through_id):
            raise ThroughIdNotStored(session_id, through_id)
        session.summary = summary
        part.touch(session, now)
        written = Summarized(summary, session.version)
        part.record(session_id, idempotency, written)
        return written

    async def get_summary(self, tenant: str, session_id: str) -> bytes | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        if not session.summary:
            raise SummaryNotFound(session_id)
        return session.summary

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        part = self._tenant(tenant)
        replayed = part.replay(session_id, idempotency)
        if isinstance(replayed, Summarized):
            return replayed
        session = part.sessions.get(session_id)
        if session is None:
            return None
        check_session_version(session_id, session, expected_version)
        if not session.summary:
            raise SummaryNotFound(session_id)
        session.summary = b''
        part.touch(session, now)
        written = Summarized(b'', session.version)
        part.record(session_id, idempotency, written)
        return written

    def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        return self._transfers.export_ids(tenant)

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        return await self._transfers.read_export(tenant, session_id, after, limit, budget)

    def importing(
        self, tenant: str, image: SessionImage, *, replace: bool
    ) -> AbstractAsyncContextManager[ImportWriter]:
        return self._transfers.importing(tenant, image, replace=replace)

    def _new(self, record: SessionRecord) -> Session:
        session = Session.new(record)
        session.entries = index.entries(record.metadata, self._indexed)
        return session

    def _check_room(self, part: Tenant) -> None:
        if self._limits.max_sessions and len(part.sessions) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        raise NotSupported('semantic search needs the Chroma backend (MEMORY_TYPE=chroma); this server runs in_memory')

    @staticmethod
    def _stored(session: Session, with_messages: bool) -> StoredSession:
        messages = session.messages
        return StoredSession(session.record(), messages.json_array(0, len(messages)) if with_messages else b'[]')
