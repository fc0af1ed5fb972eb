"""The embedded in-memory store: the reference implementation of the `Store` contract.

Not persistent, and one process only. Everything runs on the event loop without awaiting in the
middle of a change, so every method is atomic by construction. Messages are kept as the bytes
they were encoded to, in a list per session whose ids are consecutive (`first_id` is the id of
`messages[0]`), so reads by id or from the end are slices. The listing is a sorted list keyed by
(-updated_at, -id), so a page is a bisect and a slice. Idempotency records live beside the sessions
of their tenant, keyed by (session id, key), in the order they expire.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sortedcontainers import SortedKeyList

from memsvc.errors import IdempotencyKeyReused, NotSupported, SessionFull, SessionLimitReached
from memsvc.models import SearchHit, SessionRecord, StoredSession, to_micros, with_id
from memsvc.stores.base import Appended, Idempotency, Limits, ListCursor, MessageRange, check_version


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


def _check_version(session_id: str, session: _Session | None, expected: int | None) -> None:
    check_version(session_id, None if session is None else session.record.version, expected)


@dataclass(slots=True, frozen=True)
class _Recorded:
    fingerprint: str
    expires: float  # time.monotonic()
    result: SessionRecord | Appended


class _Tenant:
    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.listing: SortedKeyList[ListCursor, tuple[int, _Descending]] = SortedKeyList(key=_order)
        self.recorded: dict[tuple[str, str], _Recorded] = {}

    def replay(self, session_id: str, idempotency: Idempotency | None) -> SessionRecord | Appended | None:
        """The recorded result of this key's first request, if there is one."""
        if idempotency is None:
            return None
        found = self.recorded.get((session_id, idempotency.key))
        if found is None or found.expires < time.monotonic():
            return None
        if found.fingerprint != idempotency.fingerprint:
            raise IdempotencyKeyReused()
        return found.result

    def record(self, session_id: str, idempotency: Idempotency | None, result: SessionRecord | Appended) -> None:
        if idempotency is None:
            return
        now = time.monotonic()
        while self.recorded:  # drop expired records; the oldest come first (the TTL is one setting)
            oldest = next(iter(self.recorded))
            if self.recorded[oldest].expires >= now:
                break
            del self.recorded[oldest]
        expires = now + idempotency.ttl_seconds
        self.recorded[session_id, idempotency.key] = _Recorded(idempotency.fingerprint, expires, result)

    def touch(self, session: _Session, record: SessionRecord) -> None:
        self.listing.remove(session.position)
        session.record = record
        session.position = to_micros(record.updated_at), record.id
        self.listing.add(session.position)


class MemoryStore:
    def __init__(self, limits: Limits | None = None) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._limits = limits or Limits()
        self._max_messages = self._limits.max_messages

    def _tenant(self, tenant: str) -> _Tenant:
        part = self._tenants.get(tenant)
        if part is None:
            part = self._tenants[tenant] = _Tenant()
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
        session = part.sessions[record.id] = _Session(record)
        part.listing.add(session.position)
        part.record(record.id, idempotency, record)
        return record

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
        _check_version(session_id, session, expected_version)
        record = session.record
        part.touch(
            session, replace(record, metadata=apply(record.metadata), updated_at=now, version=record.version + 1)
        )
        return session.record

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return False
        _check_version(session_id, session, expected_version)
        del part.sessions[session_id]
        part.listing.remove(session.position)
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
    ) -> Appended:
        part = self._tenant(tenant)
        replayed = part.replay(session_id, idempotency)
        if isinstance(replayed, Appended):
            return replayed
        session = part.sessions.get(session_id)
        _check_version(session_id, session, expected_version)
        held = 0 if session is None else len(session.messages)
        if self._limits.reject_full and held + len(bodies) > self._max_messages > 0:
            raise SessionFull(session_id, self._max_messages)
        if session is None:
            self._check_room(part)
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
        appended = Appended(stored, session.record.version)
        part.record(session_id, idempotency, appended)
        return appended

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

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        part = self._tenant(tenant)
        session = part.sessions.get(session_id)
        if session is None:
            return None
        _check_version(session_id, session, expected_version)
        session.messages = []
        session.first_id = session.next_id
        part.touch(session, _touched(session.record, now))
        return session.record.version

    def _check_room(self, part: _Tenant) -> None:
        if self._limits.max_sessions and len(part.sessions) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        raise NotSupported('semantic search needs the Chroma backend (MEMORY_TYPE=chroma); this server runs in_memory')

    @staticmethod
    def _stored(session: _Session, with_messages: bool) -> StoredSession:
        return StoredSession(session.record, list(session.messages) if with_messages else [])
