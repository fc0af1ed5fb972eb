"""The embedded in-memory store: the reference implementation of the `Store` contract.

Not persistent, and one process only. Everything runs on the event loop without awaiting in the
middle of a change, so every method is atomic by construction. Messages are kept as the bytes
they were encoded to, in a list per session whose ids are consecutive (`first_id` is the id of
`messages[0]`), so reads by id or from the end are slices. The listing is a sorted list keyed by
(-updated_at, -id), so a page is a bisect and a slice.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sortedcontainers import SortedKeyList

from memsvc.errors import NotSupported
from memsvc.models import SearchHit, SessionRecord, StoredSession, to_micros, with_id
from memsvc.stores.base import ListCursor, MessageRange


@dataclass(slots=True)
class _Session:
    record: SessionRecord
    messages: list[bytes] = field(default_factory=list)
    first_id: int = 1
    next_id: int = 1
    position: ListCursor = (0, '')
    """Its place in the listing, (updated_at in µs, id); kept here so a move computes only the new one."""

    def __post_init__(self) -> None:
        self.position = to_micros(self.record.updated_at), self.record.id


class _Descending(str):
    """A string that sorts in reverse, so ties on updated_at list in descending id order."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)


def _touched(record: SessionRecord, now: datetime) -> SessionRecord:
    """`record` after a write at `now` (what `dataclasses.replace` does, at half its cost)."""
    return SessionRecord(record.id, record.created_at, now, record.metadata, record.version + 1)


def _order(position: ListCursor) -> tuple[int, _Descending]:
    return -position[0], _Descending(position[1])


class _Tenant:
    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.listing: SortedKeyList[ListCursor, tuple[int, _Descending]] = SortedKeyList(key=_order)

    def touch(self, session: _Session, record: SessionRecord) -> None:
        self.listing.remove(session.position)
        session.record = record
        session.position = to_micros(record.updated_at), record.id
        self.listing.add(session.position)


class MemoryStore:
    def __init__(self, max_messages: int = 0) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._max_messages = max_messages

    def _tenant(self, tenant: str) -> _Tenant:
        part = self._tenants.get(tenant)
        if part is None:
            part = self._tenants[tenant] = _Tenant()
        return part

    async def ping(self) -> None:
        return None

    async def create_session(self, tenant: str, record: SessionRecord) -> bool:
        part = self._tenant(tenant)
        if record.id in part.sessions:
            return False
        session = part.sessions[record.id] = _Session(record)
        part.listing.add(session.position)
        return True

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        return self._stored(session, with_messages)

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool
    ) -> tuple[list[StoredSession], bool]:
        part = self._tenant(tenant)
        start = 0 if after is None else part.listing.bisect_key_right(_order(after))
        positions = part.listing[start : start + limit]
        more = start + limit < len(part.listing)
        return [self._stored(part.sessions[sid], with_messages) for _, sid in positions], more

    async def update_metadata(
        self, tenant: str, session_id: str, apply: Callable[[bytes], bytes], now: datetime
    ) -> SessionRecord | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        record = session.record
        part.touch(
            session, replace(record, metadata=apply(record.metadata), updated_at=now, version=record.version + 1)
        )
        return session.record

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        part = self._tenant(tenant)
        session = part.sessions.pop(session_id, None)
        if session is None:
            return False
        part.listing.remove(session.position)
        return True

    async def append_messages(self, tenant: str, session_id: str, bodies: list[bytes], now: datetime) -> list[bytes]:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            record = SessionRecord(id=session_id, created_at=now, updated_at=now, metadata=b'{}', version=0)
            session = part.sessions[session_id] = _Session(record)
            part.listing.add(session.position)
        stored = [with_id(session.next_id + i, body) for i, body in enumerate(bodies)]
        session.messages.extend(stored)
        session.next_id += len(stored)
        excess = len(session.messages) - self._max_messages
        if self._max_messages and excess > 0:
            del session.messages[:excess]
            session.first_id += excess
        part.touch(session, _touched(session.record, now))
        return stored

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> list[bytes] | None:
        session = self._tenant(tenant).sessions.get(session_id)
        if session is None:
            return None
        first, count = session.first_id, len(session.messages)
        lo = 0 if selection.after is None else min(max(selection.after + 1 - first, 0), count)
        hi = count if selection.before is None else min(max(selection.before - first, 0), count)
        if selection.limit is not None and hi - lo > selection.limit:
            if selection.after is None:
                lo = hi - selection.limit
            else:
                hi = lo + selection.limit
        return session.messages[lo:hi] if lo < hi else []

    async def clear_messages(self, tenant: str, session_id: str, now: datetime) -> bool:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return False
        session.messages = []
        session.first_id = session.next_id
        part.touch(session, _touched(session.record, now))
        return True

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        raise NotSupported('semantic search needs the Chroma backend (MEMORY_TYPE=chroma); this server runs in_memory')

    @staticmethod
    def _stored(session: _Session, with_messages: bool) -> StoredSession:
        return StoredSession(session.record, list(session.messages) if with_messages else [])
