"""A tenant's part of the in-memory store (`memory`): its sessions, their listing, their metadata index and the
idempotency records of their writes; and where a selection of a session's messages lies in its log.

The listing is a sorted list of (updated_at, id), read from its end (newest first), so a page is a bisect and a
slice; a write only notes that its session moved, and the next listing re-sorts the sessions that moved, so that
an append does not pay for keeping the list sorted. The metadata index (`memory_index`) is one such sorted list per
(key, value), of the same places, sorted with the listing. Idempotency records are keyed by (session id, key), in
the order they expire.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sortedcontainers import SortedList

from memsvc.errors import IdempotencyKeyReused
from memsvc.models import SessionRecord, to_micros
from memsvc.stores import gaps as ids
from memsvc.stores.base import Appended, Idempotency, ListCursor, MessageRange, Summarized, check_version
from memsvc.stores.index import Where
from memsvc.stores.memory_index import ValueIndex
from memsvc.stores.memory_log import MessageLog


@dataclass(slots=True)
class Session:
    id: str
    created_at: datetime
    updated_at: datetime
    metadata: bytes
    version: int
    messages: MessageLog = field(default_factory=MessageLog)
    first_id: int = 1
    next_id: int = 1
    gaps: ids.Gaps = ()
    """The ids between `first_id` and `next_id` that are not stored (`stores.gaps`)."""
    summary: bytes = b''
    """As `set_summary` stored it; empty when none is set."""
    forked_from: bytes = b''
    listed: ListCursor = (0, '')
    """Its place in the tenant's listing, (updated_at in µs, id), as of the last time the listing was sorted."""
    entries: Where = ()
    """Its metadata index entries (`stores.index`), each of whose lists in `Tenant.index` holds `listed`."""

    @classmethod
    def new(cls, record: SessionRecord) -> 'Session':
        session = cls(record.id, record.created_at, record.updated_at, record.metadata, record.version)
        session.forked_from = record.forked_from
        session.listed = to_micros(record.updated_at), record.id
        return session

    def record(self) -> SessionRecord:
        return SessionRecord(self.id, self.created_at, self.updated_at, self.metadata, self.version, self.forked_from)

    def touch(self, now: datetime) -> None:
        self.updated_at = now
        self.version += 1


def check_session_version(session_id: str, session: Session | None, expected: int | None) -> None:
    check_version(session_id, None if session is None else session.version, expected)


@dataclass(slots=True, frozen=True)
class Recorded:
    fingerprint: str
    expires: float  # time.monotonic()
    result: SessionRecord | Appended | Summarized


class Tenant:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.listing: SortedList[ListCursor] = SortedList()
        """Every session's `listed` place, ascending: the API lists sessions newest first, from the end."""
        self.moved: dict[str, Session] = {}
        """Sessions written since the listing was last sorted: their `listed` place is out of date."""
        self.index = ValueIndex()
        self.recorded: dict[tuple[str, str], Recorded] = {}
        self.recorded_for: dict[str, dict[str, None]] = {}
        """Each session's recorded keys (in `recorded`), so that erasing it finds them without a walk of all."""

    def replay(self, session_id: str, idempotency: Idempotency | None) -> SessionRecord | Appended | Summarized | None:
        """The recorded result of this key's first request, if there is one."""
        if idempotency is None:
            return None
        found = self.recorded.get((session_id, idempotency.key))
        if found is None or found.expires < time.monotonic():
            return None
        if found.fingerprint != idempotency.fingerprint:
            raise IdempotencyKeyReused()
        return found.result

    def record(
        self, session_id: str, idempotency: Idempotency | None, result: SessionRecord | Appended | Summarized
    ) -> None:
        if idempotency is None:
            return
        now = time.monotonic()
        while self.recorded:  # drop expired records; the oldest come first (the TTL is one setting)
            oldest = next(iter(self.recorded))
            if self.recorded[oldest].expires >= now:
                break
            del self.recorded[oldest]
            self._unlist(*oldest)
        expires = now + idempotency.ttl_seconds
        self.recorded[session_id, idempotency.key] = Recorded(idempotency.fingerprint, expires, result)
        self.recorded_for.setdefault(session_id, {})[idempotency.key] = None

    def _unlist(self, session_id: str, key: str) -> None:
        keys = self.recorded_for.get(session_id)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self.recorded_for[session_id]

    def forget(self, session_id: str) -> None:
        """Drop the session's idempotency records (a delete keeps them; an erasure does not)."""
        for key in self.recorded_for.pop(session_id, ()):
            self.recorded.pop((session_id, key), None)

    def add(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.listing.add(session.listed)
        self.index.add(session.listed, session.entries)

    def remove(self, session: Session) -> None:
        del self.sessions[session.id]
        self.moved.pop(session.id, None)
        self.listing.remove(session.listed)
        self.index.remove(session.listed, session.entries)

    def reindex(self, session: Session, entries: Where) -> None:
        """Make `entries` the session's metadata index entries."""
        if session.entries != entries:
            self.index.change(session.listed, session.entries, entries)
            session.entries = entries

    def matching(self, where: Where, after: ListCursor | None) -> Iterator[Session]:
        """The sessions holding every entry of `where`, newest first, after the position `after` (the listing must be
        sorted)."""
        sessions = self.sessions
        for session_id in self.index.walk(where, after):
            session = sessions[session_id]
            if all(entry in session.entries for entry in where):
                yield session

    def touch(self, session: Session, now: datetime) -> None:
        session.touch(now)
        self.moved[session.id] = session

    def sorted_listing(self) -> SortedList[ListCursor]:
        """The listing, with the sessions that moved since it was last sorted in their new places."""
        for session in self.moved.values():
            self.listing.remove(session.listed)
            old, session.listed = session.listed, (to_micros(session.updated_at), session.id)
            self.listing.add(session.listed)
            if session.entries:
                self.index.move(old, session.listed, session.entries)
        self.moved.clear()
        return self.listing


def positions(session: Session, selection: MessageRange) -> tuple[int, int]:
    """The log positions lo to hi - 1 that `selection` takes."""
    first, count = session.first_id, len(session.messages)
    if session.gaps:
        lo = 0 if selection.after is None else stored_below(session, selection.after + 1)
        hi = count if selection.before is None else stored_below(session, selection.before)
    else:
        lo = 0 if selection.after is None else min(max(selection.after + 1 - first, 0), count)
        hi = count if selection.before is None else min(max(selection.before - first, 0), count)
    if selection.limit is not None and hi - lo > selection.limit:
        if selection.after is None:
            lo = hi - selection.limit
        else:
            hi = lo + selection.limit
    return lo, hi


def stored_below(session: Session, x: int) -> int:
    """How many stored messages have an id below `x`."""
    return ids.stored_below(session.gaps, session.first_id, session.next_id, x)
