"""The storage contract, and which rules live on which side of it.

The manager keeps the rules that need only the request: session ids are checked before they reach a storage
key; a request's size is bounded (messages per batch, content length, metadata keys and bytes); session ids
and message timestamps are assigned; an Idempotency-Key becomes a digest and a fingerprint of the request;
listing cursors are encoded; a store's `None`/`False` becomes a domain error. The routes know HTTP.

The stores keep the rules that depend on what is stored, because only there can a rule hold in the same atomic step
as the write it guards, also between replicas sharing one backend (a check made by the manager before the write
could be overtaken by another replica's write in between): message ids (ascending in a session and never reused,
also after a message is deleted or the tail truncated: the next append continues after the highest id ever given;
consecutive until a message is deleted, see `stores.gaps`) and session versions, creating the session on its first
append, the `expected_version` precondition (`check_version`), the `Limits` (trim or `SessionFull`;
`SessionLimitReached`), the replay of a recorded Idempotency-Key (`IdempotencyKeyReused`), and, on Redis, the
expiry of idle sessions. Two exceptions: on Redis Cluster a tenant's session count lives in another slot than the
session, so near the limit concurrent creates can pass it together (see `RedisStore`); and Chroma, which has no
transactions, holds these rules atomically within one memsvc process only, not between processes sharing a Chroma
server (see `ChromaStore`).

A session's summary (`set_summary`) is part of the session: its writes bump the version, it is deleted and
cleared with the messages (it covers messages that are gone) and it expires with them. A truncation that removes
a message the summary covers (`after < through_id`) removes the summary too: it summarises a history that was
edited away. Deleting one message leaves the summary as it is (its `through_id` stays the boundary of what it
covers, also when that message itself is deleted), and so does trimming to `max_messages`. Its `through_id` must
name a stored message (`ThroughIdNotStored`), checked atomically with the write. Each message is stored with
its `record` (`memsvc.context.record`: token count and kind, one int below 2**63, 0 for a message stored
without one), which `get_counted_messages` and `read_window` hand back and trimming reads: trimming to
`max_messages` never leaves a `tool` message first (`context.trim_count`). `read_window` is the context window's
first read, one atomic step (but on Chroma): the newest messages, their records, the count, the oldest stored
id, the leading system/developer run and the summary (`WindowRead`).

A fork (`fork_session`) copies a session's messages up to one id, with their records, into a new session that no
read, listing or search finds until one last atomic step publishes it whole (README, "Forks"). The new session's
`forked_from` (`models.fork_origin`) is kept by every read of its record. The source's summary goes with it when
the summary's `through_id` is at most the fork's. Nothing of the source changes.

Export and import (README, "Export and import") read and write whole sessions. `export_ids` lists a tenant's
sessions from a snapshot taken when it starts, and `read_export` reads a session's record with its messages from one
id on, in one atomic step (but on Chroma); the exporter (`memsvc.export`) makes each line one session at one moment
from such reads. `importing` writes a session as import takes it into a copy that no read, listing or search finds,
in bounded steps, and publishes it in one last atomic step, as a fork does (on Chroma: see `chroma/transfer.py`).

Absence is reported as `None`/`False`, never raised (but a session without a summary: `SummaryNotFound`); a
backend that cannot answer raises `BackendUnavailable` (translated inside the store, so nothing above it sees a
client library's exceptions). Every method takes the tenant, and every store keys its data by (tenant, session id).
"""

from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol, overload

import orjson

from memsvc.context import INSTRUCTION, PLAIN, RESULT, kind_of
from memsvc.errors import PreconditionFailed
from memsvc.models import SearchHit, SessionRecord, StoredSession
from memsvc.stores.gaps import Gaps
from memsvc.stores.index import Where

if TYPE_CHECKING:
    from memsvc.settings import Settings

ListCursor = tuple[int, str]
"""A position in the listing: (updated_at in microseconds, session id). Order: both descending."""


class MessageRange(NamedTuple):
    """Which messages to read. Ids are ordered; `after` pages forward, otherwise the newest come first.

    Without `after`, `limit` takes the last N messages below `before` (if any); with `after`, it takes
    the first N above it. The result is always oldest first. (A NamedTuple: it is built on every read,
    and is cheaper to build than a frozen dataclass.)
    """

    limit: int | None = None
    before: int | None = None
    after: int | None = None


_TOOL_ROLE = b'"role":"tool"'


def stored_kind(message: bytes, record: int) -> int:
    """A stored message's kind (`context.kind_of`) as trimming needs it: from its record, or, for a message stored
    without one, `RESULT` when its role is `tool` (`models.encode_message` puts the role right after the id)."""
    if record:
        return kind_of(record)
    return RESULT if message.startswith(_TOOL_ROLE, message.index(b',') + 1) else PLAIN


def summary_through(summary: bytes) -> int:
    """The `through_id` of a summary as `set_summary` stores it."""
    return int(orjson.loads(summary)['through_id'])


_INSTRUCTION_ROLES = (b'"role":"system"', b'"role":"developer"')


def is_instruction(message: bytes, record: int) -> bool:
    """Whether a stored message is a system/developer one (`WindowRead.head`): from its record, or from its role
    for a message stored without one."""
    if record:
        return kind_of(record) == INSTRUCTION
    return message.startswith(_INSTRUCTION_ROLES, message.index(b',') + 1)


ANY_VERSION = -1
"""`expected_version` for `If-Match: *`: any version, as long as the session exists."""


@dataclass(slots=True, frozen=True)
class Limits:
    """The bounds a store keeps: `max_messages` per session (0 = none), which it trims to (dropping the oldest)
    or, with `reject_full`, refuses to pass (`SessionFull`); `max_sessions` per tenant (`SessionLimitReached`)."""

    max_messages: int = 0
    reject_full: bool = False
    max_sessions: int = 0

    @classmethod
    def from_settings(cls, settings: 'Settings') -> 'Limits':
        return cls(
            max_messages=settings.max_messages_per_session,
            reject_full=settings.on_full_session == 'reject',
            max_sessions=settings.max_sessions_per_tenant,
        )


def check_version(session_id: str, current: int | None, expected: int | None) -> None:
    """Raise `PreconditionFailed` unless a session at version `current` (None: absent) is `expected`."""
    if expected is None:
        return
    if current is None or (expected != ANY_VERSION and current != expected):
        raise PreconditionFailed(session_id, current)


@dataclass(slots=True, frozen=True)
class Idempotency:
    """A client's Idempotency-Key, recorded with its write in the same atomic step.

    `key` and `fingerprint` are hex digests (of the client's key, and of the request it came with). A
    store that finds `key` recorded for the session does not write again: it returns the recorded
    result if the fingerprints match, and raises `IdempotencyKeyReused` if they do not.
    """

    key: str
    fingerprint: str
    ttl_seconds: int


@dataclass(slots=True, frozen=True)
class Appended:
    messages: list[bytes]
    version: int


@dataclass(slots=True, frozen=True)
class Summarized:
    """What a summary write answers: the summary as stored (`{"content", "through_id", "updated_at"}`, the
    JSON the API answers with; empty after a delete) and the session's new version."""

    summary: bytes
    version: int


Counted = tuple[bytes, int]
"""A stored message and its record (0: stored without one; the reader counts it)."""


@dataclass(slots=True, frozen=True)
class Truncated:
    """What a truncation answers: how many messages it removed, and the session's new version."""

    deleted: int
    version: int


@dataclass(slots=True, frozen=True)
class Fork:
    """What `fork_session` makes: a session `target` holding the messages of `source` up to `through_id` (None:
    its last), created at `now` with `metadata` (None: the source's)."""

    source: str
    target: str
    through_id: int | None
    metadata: bytes | None
    now: datetime


@dataclass(slots=True)
class ForkHook:
    """A test hook of the stores' forks: `chunk_written`, when set, is awaited after each step of the copy with the
    number of messages copied so far."""

    chunk_written: Callable[[int], Awaitable[None]] | None = None


FORK_HIDDEN_TTL_SECONDS = 600
"""How long a fork's hidden copy outlives its last step where the store can expire it (Redis): a fork that
stopped half-way (a crash, a lost connection) leaves nothing behind for longer. Each chunk written refreshes it."""


class CountedPage(NamedTuple):
    messages: list[Counted]
    """The selected messages, oldest first."""
    total: int
    """How many messages the session stores."""


class MessagePage(Sequence[bytes]):
    """Consecutive stored messages held as their JSON joined by commas, one bytes, as a store that keeps them so
    (the in-memory one) hands them over without cutting a bytes per message: `ends` are where each message's
    comma ends, offset by `base` (where the first starts). `newest(k)` is the last k joined, one slice."""

    __slots__ = ('base', 'ends', 'page')

    def __init__(self, page: bytes, ends: 'array[int]', base: int) -> None:
        self.page, self.ends, self.base = page, ends, base

    def __len__(self) -> int:
        return len(self.ends)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[n] for n in range(*index.indices(len(self)))]
        ends = self.ends
        if index < 0:
            index += len(ends)
        if not 0 <= index < len(ends):
            raise IndexError(index)
        start = ends[index - 1] - self.base if index else 0
        return self.page[start : ends[index] - self.base - 1]

    def newest(self, count: int) -> bytes:
        ends = self.ends
        return self.page[ends[len(ends) - count - 1] - self.base :] if count < len(ends) else self.page


def join_newest(messages: Sequence[bytes], count: int) -> bytes:
    """The last `count` of `messages` joined by commas (the inside of a JSON array of them)."""
    if isinstance(messages, MessagePage):
        return messages.newest(count)
    return b','.join(messages[len(messages) - count :])


class WindowRead(NamedTuple):
    """What the context window reads first, in one step (on Redis one round trip)."""

    messages: Sequence[bytes]
    """The newest `limit` messages (all without one), oldest first."""
    records: Sequence[int]
    """Their records, parallel to `messages` (0: stored without one)."""
    total: int
    """How many messages the session stores."""
    oldest_id: int
    """The id of the session's oldest stored message (0: none). Ids are increasing, not consecutive."""
    head: Sequence[bytes]
    """When `messages` does not start at the oldest message: the session's leading system/developer run,
    oldest first, at most `head` messages of it (as many: it may go on). Empty otherwise."""
    head_records: Sequence[int]
    """Their records, parallel to `head`."""
    summary: bytes | None
    """The summary as `set_summary` stored it; None: none is set."""


@dataclass(slots=True, frozen=True)
class SessionImage:
    """A session as a line of an export holds it, but its messages: the record (its version is ignored by an
    import, which starts the version again, or moves it on when it replaces a session), the next message id, and
    the summary as `set_summary` stored it (empty: none)."""

    record: SessionRecord
    next_id: int
    summary: bytes = b''


class ExportRead(NamedTuple):
    """What `read_export` reads in one step."""

    image: SessionImage
    first_id: int
    """The id of the oldest stored message (`next_id` when there is none)."""
    gaps: Gaps
    held: int
    """How many messages the session stores."""
    messages: Sequence[bytes]
    """Its stored messages with ids above the one asked for, oldest first: at most `limit`, and no more than fit in
    `budget` bytes with a comma after each (at least one, when there is one and `limit` is not 0)."""


class ImportWriter(Protocol):
    """A session being imported (`Store.importing`): nothing of it is visible until `publish`."""

    async def write(self, messages: list[bytes], records: list[int]) -> None:
        """Add stored messages (with their ids, ascending, above those written before) and their records."""

    async def publish(self, gaps: Gaps) -> None:
        """Make what was written the session, in one atomic step: with the image's created_at, updated_at, metadata,
        forked_from, next id and summary, version 0 (or the replaced session's + 1). `gaps` are the ids between the
        first message written and the next id that are not stored. Raises `SessionExists` when the id is taken
        (unless replacing: then that session is replaced whole) and `SessionLimitReached`."""


class Store(Protocol):
    """Writes that take `expected_version` raise `PreconditionFailed` when the session's version is another
    one (or, for an append, when the session does not exist), and change nothing."""

    self_timed: frozenset[str]
    """The operations (method names) that keep to the store deadline, `Settings.store_deadline()`, on their
    own, raising `StoreTimeout` past it (the Redis store: one timer for a batch of calls). `InstrumentedStore`
    puts its deadline around the others."""

    async def ping(self) -> None:
        """Return when the backend answers; raise `BackendUnavailable` otherwise."""

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        """Create `record` and return it, unless its id exists (then return None and change nothing)."""

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None: ...

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool, where: Where = ()
    ) -> tuple[list[StoredSession], bool]:
        """Up to `limit` sessions, newest `updated_at` first, starting after the `after` position, and
        whether more follow; with `where`, only the sessions whose metadata holds all of it (`stores.index`),
        found through the metadata index (never by reading every session)."""

    async def index_session(self, tenant: str, session_id: str) -> bool:
        """Write the session's index entries again from its stored metadata and `updated_at`, under the configured
        keys (dropping entries under keys no longer indexed). False: no such session. What an import calls after
        it wrote a session, and what `memsvc reindex` does for each (`memsvc.reindex`)."""

    async def count_sessions(self, tenant: str) -> int:
        """How many sessions the tenant has, about (on Redis the listing's size, expired ones not yet dropped
        included): the total of `memsvc reindex`'s progress bar."""

    def reindex(self, tenant: str) -> AsyncIterator[int]:
        """`index_session` for every session of the tenant, in batches; yields how many each batch indexed. Sessions
        written meanwhile are still visited (and indexed by their own writes too)."""

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        """Replace the metadata with `apply(current)` atomically; `apply` may raise to abort."""

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        """Remove the session, its messages, summary, vectors and index entries. Its idempotency records stay (but on
        Chroma), so that a retry of a write whose answer was lost replays it rather than writing again."""

    async def erase_session(self, tenant: str, session_id: str) -> bool:
        """`delete_session` without a version check, and with the session's idempotency records (which hold what
        its writes answered): what an erasure (`memsvc.erasure`) does to each session. The records go also when the
        session is gone (False), so that a repeated erasure finishes what a stopped one left."""

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
        """Append messages encoded by `models.encode_message` in one atomic step, creating the session if
        it is missing, and return them as stored (with their ids, `models.with_id`) and the new version.
        `records` are the messages' records, stored next to them (None: 0 for each)."""

    async def fork_session(
        self, tenant: str, fork: Fork, *, idempotency: Idempotency | None = None, with_messages: bool = True
    ) -> StoredSession | None:
        """Make `fork.target` a copy of `fork.source` up to `fork.through_id`, all or nothing, and return it (its
        messages only `with_messages`). None: no such source. Raises `MessageNotFound` (`through_id` is not a stored
        message), `SessionExists` (the target id is taken, also when it was taken while the copy ran),
        `SessionLimitReached`, `ForkSourceChanged` (the source lost messages being copied). A recorded
        Idempotency-Key answers the fork as it is now (`SessionNotFound` if it was deleted since)."""

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        """The selected messages, oldest first, as one JSON array: the body of the API's answer."""

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage | None:
        """The selected messages with their records, and the number stored (None: no such session)."""

    async def read_window(self, tenant: str, session_id: str, limit: int | None, head: int) -> WindowRead | None:
        """The context window's first read (None: no such session), atomic on every store but Chroma."""

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        """Remove every message and the summary, and return the new version; the session and its metadata
        stay. Ids are never reused."""

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        """Remove the message with id `message_id` (`MessageNotFound` if none is stored; checked after the version)
        and return the new version; on a store with search its vector goes too. The summary stays."""

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, *, expected_version: int | None = None
    ) -> Truncated | None:
        """Remove every message with an id above `after` (none: still a write, the version moves), and the summary
        if it covers one of them (`through_id > after`). Ids are never reused."""

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
        """Store `summary` (the JSON to answer) as the session's summary, replacing any, if a message with id
        `through_id` is stored (else raise `ThroughIdNotStored`). None: no such session."""

    async def get_summary(self, tenant: str, session_id: str) -> bytes | None:
        """The summary as stored by `set_summary`; None: no such session; `SummaryNotFound`: none set."""

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        """Remove the summary (`SummaryNotFound` if none is set); None: no such session."""

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        """Semantic search, best first; stores without it raise `NotSupported`."""

    def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        """The tenant's session ids in pages, newest `updated_at` first (ties: descending id), as they were when the
        iteration began: a session written meanwhile keeps its place, one created meanwhile is not listed, one
        deleted meanwhile may be (its `read_export` answers None)."""

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        """The session's record and its messages with ids above `after` (None: no such session), in one step."""

    def importing(
        self, tenant: str, image: SessionImage, *, replace: bool
    ) -> AbstractAsyncContextManager[ImportWriter]:
        """A writer of the session `image` describes (`replace`: in place of one with its id); leaving the context
        without `publish` drops what it wrote. On a store with an idle TTL, the TTL starts again when the session is
        published (its `updated_at` kept as stored)."""
