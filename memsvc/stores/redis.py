"""The Redis store: Redis is the source of truth, so any number of replicas share one Redis (or Cluster).

Key layout (`p` is `MEMSVC_KEY_PREFIX`; the hash tag `{<tenant>/<id>}` keeps a session in one slot):

    {p}:{<tenant>/<id>}:meta        HASH  created_at, updated_at (µs since the epoch), metadata (JSON), next_id, version
    {p}:{<tenant>/<id>}:msgs        LIST  messages as stored (the bytes `models.with_id` gives), oldest first
    {p}:{<tenant>/<id>}:counts      LIST  the messages' records (decimal; `memsvc.context.record`), oldest first
    {p}:{<tenant>/<id>}:summary     STRING  the summary as the API answers it
    {p}:{<tenant>/<id>}:idem:<key>  HASH  fingerprint, result (what the write answered; `key` a digest)
    {p}:{<tenant>/<id>}:idems       SET   the names of the session's `:idem:` keys, for an erasure to find them
    {p}:<tenant>:sessions           ZSET  session id -> updated_at (µs); ties list in descending id order
    {p}:{<tenant>/<id>}:events      (S)PUBLISH channel, not a key: each write's wake-up (`memsvc.events`)

and, in the listing's slot (its name is their hash tag), the metadata index (`redis_index`):

    {{p}:<tenant>:sessions}:indexed       HASH  session id -> the names of the sets below it is in, one a line
    {{p}:<tenant>:sessions}:by:<k>:<v>    ZSET  session id -> updated_at (µs): the sessions whose metadata holds the
                                                string <v> under the indexed key <k> (`MEMSVC_INDEXED_METADATA`)
    {{p}:<tenant>:sessions}:imported      ZSET  session id -> when it was imported (µs), with an idle TTL: its TTL
                                                started then, not at its updated_at (`redis_transfer`)

`meta` also holds `gaps` while the session has some (`stores.gaps`, e.g. "6:11,15:16": ids 6 to 10 and 15), and
`forked_from` (JSON) on a fork. While a fork is copied, two hidden lists under the new session's hash tag,
`:fork:<nonce>:msgs` and `:fork:<nonce>:counts`, hold the copy (`redis_fork`); while a session is imported, two more,
`:import:<nonce>:msgs` and `:import:<nonce>:counts`; and while an export runs, a snapshot of the tenant's index,
`{p}:<tenant>:export:<nonce>` (`redis_transfer`).

The list holds the ids `first .. next_id - 1` minus the session's gaps (`stores.gaps`: ids deleted one by one or
cut by a truncation), and only real messages, so the first id is derived, never stored (`next_id - LLEN - the ids
in the gaps`): trimming to `MEMSVC_MAX_MESSAGES_PER_SESSION`, deleting, truncating and clearing keep ids stable and
unique, and a read by id or from the end is one LRANGE. Why gaps rather than tombstones in the list: the list then
holds only messages, so the hot reads (the last N, a whole session) stay plain LRANGEs that need no filtering and
answer exactly N real messages, and a session that never lost a message has no `gaps` field: every script maps ids
to positions by arithmetic, as before. Only reads by id range, the summary's check and the edits read the gaps. A
deleted message leaves the list (LSET to a marker, then LREM from the nearer end); a truncation is one LTRIM and
one gap up to next_id, so that the next append continues after the highest id ever given. `counts` is aligned with
the end of `msgs`: it holds a record for each of the last LLEN(counts) messages (messages stored before records
were have none, and are counted when read); it is pushed, trimmed, cleared and deleted in the same scripts as
`msgs`. Trimming never leaves a tool message first: the tool messages right after the cut go with it. The summary
is cleared with the messages (it covers messages that are gone), and by a truncation below its `through_id`. An
`:idem:` record is written by the write that carried an Idempotency-Key, in the same script, and lives for the
key's own TTL; its name joins `:idems`, which lives as long as the longest-lived of them. A delete leaves both (a
retry replays its first answer); an erasure (`ERASE`) deletes them with the session. Nothing is cached in the
process.

Every write is one Lua script (`redis_scripts`) that creates the session if needed, takes ids, pushes,
trims, bumps `updated_at` and `version`, and sets the idle TTL on all of the session's keys together — it
never reads the whole session. `updated_at` never moves backwards (`max(old, now)`), so replicas with
slightly different clocks cannot reorder a session in the listing.

The store is written once over a `redis_transport.Transport`, which sends the calls (on a single Redis,
those of concurrent requests together) and turns client errors into `BackendUnavailable` (503), never
"not found". Two differences show through, each read once when the store is made: `keeps_deadline` (whether
the transport times each call itself, see `_SELF_TIMED`) and `spans_slots`:

On a single Redis the session script also updates the tenant's listing and metadata index, so a write is one
atomic round trip. On Redis Cluster they live in another slot, which one script cannot touch: an append
sends the session script and an index update (`redis_index.TOUCH_INDEX`, `ZADD GT`) concurrently (still one
round-trip time), create/update/clear update the index after their script succeeded, delete takes the session out
of the index after its script; a PATCH that changes an indexed value joins the new value's set before its script
and leaves the old one after it (`RedisIndex.metadata_changing`). The trade-off: on Cluster the index is updated next
to, not inside, the session's atomic step. If the second command fails (503) the session is listed at its previous
position until its next write; an index entry whose session is gone or (a filter's) no longer matches is skipped
and removed by the listing (the repair rule, `redis_index`). The tenant's session limit is checked there before a
write that may create a session, not atomically with it.

Expired sessions leave the listing and the index: the listing reads each candidate's meta, skips and removes
(only if its score is unchanged) entries whose session is gone, and every write takes a few entries older than
TTL + a minute out of the listing and the index; the index keys themselves expire a minute after the last write of
a session in them.

The reads (key names, sessions, the listing, messages, the summary) are in `redis_reads`.

Round trips: append 1 (on Cluster 2, sent concurrently); get the last N messages 1; get a session 1; the context
window's first read 1 (READ_WINDOW: the newest messages, their records, the pinned run, the summary);
a page of the listing 2 (index, then the sessions' reads; +1 when it removes dead entries); PATCH 2
(read, then compare-and-set; +1 on Cluster).
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from memsvc.errors import (
    BackendUnavailable,
    IdempotencyKeyReused,
    MessageNotFound,
    NotSupported,
    PreconditionFailed,
    SessionFull,
    SessionLimitReached,
    SummaryNotFound,
    ThroughIdNotStored,
)
from memsvc.models import SearchHit, SessionRecord, StoredSession, to_micros, with_id
from memsvc.settings import Settings
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import (
    ANY_VERSION,
    Appended,
    ExportRead,
    Fork,
    Idempotency,
    ImportWriter,
    Limits,
    SessionImage,
    Summarized,
    Truncated,
)
from memsvc.stores.redis_client import Client, masked_url
from memsvc.stores.redis_fork import RedisForks
from memsvc.stores.redis_index import INDEX_GRACE_SECONDS, RedisIndex
from memsvc.stores.redis_lua import Arg
from memsvc.stores.redis_reads import RedisKeys, RedisReads, as_bytes, session_record
from memsvc.stores.redis_transfer import RedisTransfers
from memsvc.stores.redis_transport import transport_for

_CAS_ATTEMPTS = 100
_SELF_TIMED = frozenset({'append_messages', 'get_messages', 'get_session', 'read_window'})
"""The operations that reach Redis only through transport calls, so on a transport that keeps the store deadline
the instrumented store puts no timer of its own around them. That deadline bounds each batch sent, not the
operation: append_messages and get_session send one batch; get_messages on an empty list sends a second (EXISTS
with LRANGE, to tell an empty session from a missing one), and read_window sends a second on an empty list (its
MULTI/EXEC again, with EXISTS) or on a session with a leading system/developer run that its newest messages do not
reach (READ_WINDOW), so those reads may take up to two deadlines."""


def _expected(version: int | None) -> str:
    """An expected version as the scripts take it: '' for none, '*' for any."""
    if version is None:
        return ''
    return '*' if version == ANY_VERSION else str(version)


def _answer(session_id: str, reply: Sequence[Any]) -> tuple[bytes, Sequence[Any]]:
    """A session script's status and the rest of its reply; the refusals every write shares are raised."""
    status = as_bytes(reply[0])
    if status == b'stale':
        current = as_bytes(reply[1])
        raise PreconditionFailed(session_id, int(current) if current else None)
    if status == b'reused':
        raise IdempotencyKeyReused()
    return status, reply[1:]


class RedisStore(RedisReads):
    """The `Store` contract on Redis or Redis Cluster, written once over a `Transport`. The client is the
    caller's: it opens and closes it."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        """For `memsvc.redis_wakeups.RedisWakeups`, which opens its own connections like the client's."""
        self._redis = transport_for(client, settings)
        # Asked once: on Cluster the tenant's index is updated beside the session scripts (module docstring).
        self._index_beside = self._redis.spans_slots
        self.self_timed: frozenset[str] = _SELF_TIMED if self._redis.keeps_deadline else frozenset()
        self._prefix = settings.key_prefix
        self._ttl = settings.session_ttl_seconds
        self._limits = Limits.from_settings(settings)
        self._max_messages = self._limits.max_messages
        self._tenant_keys: dict[str, RedisKeys] = {}
        self._reject_full = '1' if self._limits.reject_full else '0'
        self._index = RedisIndex(self._redis, settings.indexed_keys(), self._ttl, self._cutoff)
        self.forks = RedisForks(self)
        self._transfers = RedisTransfers(self)

    async def open(self, url: str) -> None:
        """Check at start that Redis answers; the error names the URL (password masked)."""
        try:
            await self._redis.open()
        except BackendUnavailable as exc:
            cause = exc.__cause__
            detail = ' '.join(str(cause).split()) or type(cause).__name__
            raise BackendUnavailable(f'Redis at {masked_url(url)} does not answer: {detail}') from None

    def _session(
        self,
        keys: RedisKeys,
        session_id: str,
        now: datetime,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> list[Arg]:
        """The values every session script takes first (`lua.SESSION`), bound."""
        micros = to_micros(now)
        if idempotency is None:  # no record is written: `idems` is not touched, and needs no name of its own
            idem, fingerprint, idem_ttl = keys.idempotency(session_id, '-'), '', 0
            idems = idem
        else:
            idem, fingerprint = keys.idempotency(session_id, idempotency.key), idempotency.fingerprint
            idem_ttl, idems = idempotency.ttl_seconds, keys.idems(session_id)
        return lua.SESSION.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            summary=keys.summary(session_id),
            idem=idem,
            idems=idems,
            sessions=None if self._index_beside else keys.sessions(),
            now=str(micros),
            ttl=self._ttl,
            cutoff=self._cutoff(micros),
            session_id=session_id,
            expected=_expected(expected_version),
            fingerprint=fingerprint,
            idem_ttl=idem_ttl,
        )

    def _cutoff(self, micros: int) -> str:
        return str(micros - (self._ttl + INDEX_GRACE_SECONDS) * 1_000_000)

    async def ping(self) -> None:
        await self._redis.ping()

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        keys = self._keys(tenant)
        session = self._session(keys, record.id, record.updated_at, idempotency=idempotency)
        if self._index_beside:
            await self._check_room(keys, record.id)
        call = lua.CREATE.bind(
            session,
            created_at=str(to_micros(record.created_at)),
            metadata=record.metadata,
            version=str(record.version),
            max_sessions=self._limits.max_sessions,
            entries='' if self._index_beside else self._index.names_text(keys.index, record.metadata),
        )
        reply = await self._redis.script(call)
        status, rest = _answer(record.id, reply)
        if status == b'exists':
            return None
        if status == b'limit':
            raise SessionLimitReached(self._limits.max_sessions)
        if status == b'replay':
            created_at, metadata = as_bytes(rest[0]).split(b'\n', 1)
            return session_record(record.id, created_at, created_at, metadata, 0)
        if self._index_beside:
            names = self._index.names(keys.index, record.metadata)
            await self._index.touch(keys.index, record.id, to_micros(record.updated_at), added=names)
        return record

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        """Optimistic: read, `apply` here, then a script sets the result only if the metadata is unchanged,
        else retries. It compares the metadata itself, not the version, so appends never force a retry. On a single
        Redis the script moves the session between the index's sets too; on Cluster the index is changed before and
        after it (`RedisIndex.metadata_changing`, `metadata_set`)."""
        keys = self._keys(tenant)
        session = self._session(keys, session_id, now, expected_version)
        meta = keys.meta(session_id)
        for _ in range(_CAS_ATTEMPTS):
            found = await self._redis.command('HGET', meta, 'metadata')
            if found is None:
                return None
            current = as_bytes(found)
            new = apply(current)
            leaving: list[str] = []
            if self._index_beside:
                leaving = await self._index.metadata_changing(keys.index, session_id, current, new, to_micros(now))
            entries = '' if self._index_beside else self._index.names_text(keys.index, new)
            call = lua.SET_METADATA.bind(session, seen=current, new=new, entries=entries)
            # (A refused or lost compare-and-set leaves the sets joined above as extra entries, which reads drop.)
            status, rest = _answer(session_id, await self._redis.script(call))
            if status == b'gone':
                return None
            if status == b'ok':
                created_at, updated_at, version, forked_from = rest
                if self._index_beside:
                    await self._index.metadata_set(keys.index, meta, session_id, int(updated_at), leaving)
                return session_record(session_id, created_at, updated_at, new, version, forked_from or None)
        raise BackendUnavailable(f'session {session_id!r} is being updated too often to apply this change; retry')

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        keys = self._keys(tenant)
        call = lua.DELETE.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            summary=keys.summary(session_id),
            sessions=None if self._index_beside else keys.sessions(),
            session_id=session_id,
            expected=_expected(expected_version),
        )
        reply = await self._redis.script(call)
        status, _ = _answer(session_id, reply)
        if status == b'ok' and self._index_beside:
            await self._index.unindex(keys.index, [session_id])
        return status == b'ok'

    async def erase_session(self, tenant: str, session_id: str) -> bool:
        keys = self._keys(tenant)
        call = lua.ERASE.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            summary=keys.summary(session_id),
            idems=keys.idems(session_id),
            sessions=None if self._index_beside else keys.sessions(),
            session_id=session_id,
        )
        erased = as_bytes((await self._redis.script(call))[0]) == b'ok'
        if erased and self._index_beside:  # as a delete does; an entry a stop here leaves, reads drop (repair)
            await self._index.unindex(keys.index, [session_id])
        return erased

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
        keys = self._keys(tenant)
        call = lua.APPEND.bind(
            self._session(keys, session_id, now, expected_version, idempotency),
            max_messages=self._max_messages,
            reject_full=self._reject_full,
            max_sessions=self._limits.max_sessions,
            bodies=[*bodies, *(records if records is not None else [0] * len(bodies))],
        )
        if self._index_beside:  # the index update goes with the script: one round-trip time
            await self._check_room(keys, session_id)
            reply, _ = await _both(self._redis.script(call), self._index.touch(keys.index, session_id, to_micros(now)))
        else:
            reply = await self._redis.script(call)
        status, rest = _answer(session_id, reply)
        if status == b'ok':
            first = int(rest[0])
            return Appended([with_id(first + n, body) for n, body in enumerate(bodies)], int(rest[1]))
        if status == b'full':
            raise SessionFull(session_id, self._max_messages)
        if status == b'limit':
            raise SessionLimitReached(self._limits.max_sessions)
        # 'replay'
        recorded_version, *stored = as_bytes(rest[0]).split(b'\n')
        return Appended(stored, int(recorded_version))

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
        keys = self._keys(tenant)
        session = self._session(keys, session_id, now, expected_version, idempotency)
        reply = await self._redis.script(lua.SET_SUMMARY.bind(session, text=summary, through_id=str(through_id)))
        status, rest = _answer(session_id, reply)
        if status == b'gone':
            return None
        if status == b'unknown':
            raise ThroughIdNotStored(session_id, through_id)
        if status == b'replay':
            version, recorded = as_bytes(rest[0]).split(b'\n', 1)
            return Summarized(recorded, int(version))
        updated_at, version = rest
        if self._index_beside:
            await self._index.touch(keys.index, session_id, int(updated_at))
        return Summarized(summary, int(version))

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        keys = self._keys(tenant)
        session = self._session(keys, session_id, now, expected_version, idempotency)
        status, rest = _answer(session_id, await self._redis.script(lua.DELETE_SUMMARY.bind(session)))
        if status == b'gone':
            return None
        if status == b'none':
            raise SummaryNotFound(session_id)
        if status == b'replay':
            return Summarized(b'', int(as_bytes(rest[0])))
        updated_at, version = rest
        if self._index_beside:
            await self._index.touch(keys.index, session_id, int(updated_at))
        return Summarized(b'', int(version))

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        keys = self._keys(tenant)
        status, rest = _answer(
            session_id, await self._redis.script(lua.CLEAR.bind(self._session(keys, session_id, now, expected_version)))
        )
        if status == b'gone':
            return None
        updated_at, version = rest
        if self._index_beside:
            await self._index.touch(keys.index, session_id, int(updated_at))
        return int(version)

    async def fork_session(
        self, tenant: str, fork: Fork, *, idempotency: Idempotency | None = None, with_messages: bool = True
    ) -> StoredSession | None:
        return await self.forks.fork(tenant, fork, idempotency, with_messages)

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        keys = self._keys(tenant)
        session = self._session(keys, session_id, now, expected_version)
        call = lua.DELETE_MESSAGE.bind(session, message_id=str(message_id))
        status, rest = _answer(session_id, await self._redis.script(call))
        if status == b'gone':
            return None
        if status == b'unknown':
            raise MessageNotFound(session_id, message_id)
        updated_at, version = rest
        if self._index_beside:
            await self._index.touch(keys.index, session_id, int(updated_at))
        return int(version)

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, *, expected_version: int | None = None
    ) -> Truncated | None:
        keys = self._keys(tenant)
        session = self._session(keys, session_id, now, expected_version)
        status, rest = _answer(session_id, await self._redis.script(lua.TRUNCATE.bind(session, after=str(after))))
        if status == b'gone':
            return None
        deleted, updated_at, version = rest
        if self._index_beside:
            await self._index.touch(keys.index, session_id, int(updated_at))
        return Truncated(int(deleted), int(version))

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        raise NotSupported('semantic search needs the Chroma backend (MEMORY_TYPE=chroma); this server runs redis')

    def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        return self._transfers.export_ids(tenant)

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        return await self._transfers.read_export(tenant, session_id, after, limit, budget)

    def importing(
        self, tenant: str, image: SessionImage, *, replace: bool
    ) -> AbstractAsyncContextManager[ImportWriter]:
        return self._transfers.importing(tenant, image, replace=replace)

    async def index_session(self, tenant: str, session_id: str) -> bool:
        keys = self._keys(tenant)
        return bool(await self._index.reindex(keys.index, keys.meta, [session_id]))

    async def count_sessions(self, tenant: str) -> int:
        """How many sessions the tenant's listing holds (those expired but not yet dropped included)."""
        return int(await self._redis.command('ZCARD', self._keys(tenant).sessions()))

    async def reindex(self, tenant: str) -> AsyncIterator[int]:
        keys = self._keys(tenant)
        async for done in self._index.walk(keys.index, keys.meta):
            yield done

    # Cluster only: the tenant's session limit, checked in another slot than the session (see the module docstring).

    async def _check_room(self, keys: RedisKeys, session_id: str) -> None:
        """The tenant's session limit, checked before a write that may create a session. Not atomic with the
        write: near the limit, concurrent creates can pass it together. (On a single Redis the scripts check it.)"""
        if not self._limits.max_sessions or await self._redis.command('EXISTS', keys.meta(session_id)):
            return
        if await self._redis.command('ZCARD', keys.sessions()) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Run two calls concurrently (one round-trip time); if either fails, raise its error after both end."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0], results[1]
