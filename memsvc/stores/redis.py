"""The Redis store: Redis is the source of truth, so any number of replicas share one Redis (or Cluster).

Key layout (`p` is `MEMSVC_KEY_PREFIX`; the hash tag `{<tenant>/<id>}` keeps a session in one slot):

    {p}:{<tenant>/<id>}:meta   HASH  created_at, updated_at (µs since the epoch), metadata (JSON), next_id, version
    {p}:{<tenant>/<id>}:msgs   LIST  messages as stored (the bytes `models.with_id` gives), oldest first
    {p}:<tenant>:sessions      ZSET  session id -> updated_at (µs); ties list in descending id order

The list always holds the consecutive ids `next_id - LLEN .. next_id - 1`, so the first id is derived,
never stored: trimming to `MEMSVC_MAX_MESSAGES_PER_SESSION` and clearing keep ids stable and unique,
and a read by id or from the end is one LRANGE. Nothing is cached in the process.

Every write is one Lua script (EVALSHA; redis-py's Script reloads it after NOSCRIPT, e.g. after a
restart) that creates the session if needed, takes ids, pushes, trims, bumps `updated_at` and
`version`, and sets the idle TTL on all of the session's keys together — it never reads the whole
session. `updated_at` never moves backwards (`max(old, now)`), so replicas with slightly different
clocks cannot reorder a session in the listing.

On a single Redis the same script also updates the tenant's index, so a write is one atomic round
trip. On Redis Cluster the index lives in another slot, which one script cannot touch: an append
sends the session script and an index update (`ZADD GT`) concurrently (still one round-trip time),
create/update/clear update the index after their script succeeded, delete sends `ZREM` with its
script. The trade-off: on Cluster the index is updated next to, not inside, the session's atomic
step. If the second command fails (503) the session is listed at its previous position until its
next write; an index entry whose session is gone is skipped and removed by the listing.

Expired sessions leave the listing: the listing reads each candidate's meta, skips and removes
(only if its score is unchanged) entries whose session is gone, and every write drops entries older
than TTL + a minute (`ZREMRANGEBYSCORE`); the index key itself expires a minute after its tenant's
last write.

Reads need no script on a single Redis: the last N messages are one LRANGE (with EXISTS in a MULTI/EXEC
only when the list is empty, to tell an empty session from a missing one), a session is a MULTI/EXEC of
HMGET and LRANGE; plain commands cost redis-server a quarter of the CPU a Lua script of the same reads
did. A read by id range (before/after) runs GET_MESSAGES. The calls of concurrent requests are sent
together (`redis_client.Coalescer`). On Cluster, reads run the scripts.

Round trips: append 1 (on Cluster 2, sent concurrently); get the last N messages 1; get a session 1;
a page of the listing 2 (index, then one transaction reading the sessions, on Cluster one pipeline; +1 when
it removes dead entries); PATCH 2 (read, then compare-and-set; +1 on Cluster). Every client error or timeout
becomes `BackendUnavailable` here (503), never "not found".
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from memsvc.errors import (
    BackendUnavailable,
    IdempotencyKeyReused,
    NotSupported,
    PreconditionFailed,
    SessionFull,
    SessionLimitReached,
)
from memsvc.models import SearchHit, SessionRecord, StoredSession, from_micros, json_array, to_micros, with_id
from memsvc.settings import Settings
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import ANY_VERSION, Appended, Idempotency, Limits, ListCursor, MessageRange
from memsvc.stores.redis_client import Client, Coalescer, Guard, masked_url, unavailable
from memsvc.stores.redis_scripts import INDEX_GRACE_SECONDS

_CAS_ATTEMPTS = 100


class RedisKeys:
    """The one place key names are built."""

    __slots__ = ('prefix', 'tenant')

    def __init__(self, prefix: str, tenant: str) -> None:
        if any(c in tenant for c in '{}'):
            raise ValueError(f'tenant {tenant!r} cannot be part of a Redis key')
        self.prefix, self.tenant = prefix, tenant

    def meta(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:meta'

    def msgs(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:msgs'

    def idempotency(self, session_id: str, key: str) -> str:
        """The record of an Idempotency-Key (`key` is its digest), beside the session it wrote to."""
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:idem:{key}'

    def sessions(self) -> str:
        return f'{self.prefix}:{self.tenant}:sessions'


_META_FIELDS = ('created_at', 'updated_at', 'metadata', 'version')


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _expected(version: int | None) -> str:
    """An expected version as the scripts take it: '' for none, '*' for any."""
    if version is None:
        return ''
    return '*' if version == ANY_VERSION else str(version)


def _answer(session_id: str, reply: Sequence[Any]) -> tuple[bytes, Sequence[Any]]:
    """A session script's status and the rest of its reply; the refusals every write shares are raised."""
    status = _bytes(reply[0])
    if status == b'stale':
        current = _bytes(reply[1])
        raise PreconditionFailed(session_id, int(current) if current else None)
    if status == b'reused':
        raise IdempotencyKeyReused()
    return status, reply[1:]


def _pairs(reply: list[Any]) -> list[tuple[bytes, float]]:
    """The reply of a ZREVRANGE... WITHSCORES as (member, score) pairs, in RESP3 (redis-py's default) or RESP2."""
    if reply and isinstance(reply[0], list):
        return [(member, float(score)) for member, score in reply]
    return [(reply[n], float(reply[n + 1])) for n in range(0, len(reply), 2)]


def _record(session_id: str, created_at: Any, updated_at: Any, metadata: Any, version: Any) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        created_at=from_micros(int(created_at)),
        updated_at=from_micros(int(updated_at)),
        metadata=bytes(metadata),
        version=int(version),
    )


class RedisStore:
    """The `Store` contract on Redis or Redis Cluster. The client is the caller's: it opens and closes it."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = settings.key_prefix
        self._ttl = settings.session_ttl_seconds
        self._limits = Limits.from_settings(settings)
        self._max_messages = self._limits.max_messages
        self._pool_timeout = settings.redis_pool_timeout
        # redis-py's async Cluster client has no blocking pool; this gives it the same wait-then-503.
        self._slots = asyncio.Semaphore(settings.redis_max_connections) if self._cluster else None
        pool = client.connection_pool if isinstance(client, Redis) else None
        self._guard = Guard(self._slots, self._pool_timeout, pool)
        script = client.register_script
        self._append, self._create, self._set_metadata = (
            script(lua.APPEND),
            script(lua.CREATE),
            script(lua.SET_METADATA),
        )
        self._clear, self._delete, self._touch_index = script(lua.CLEAR), script(lua.DELETE), script(lua.TOUCH_INDEX)
        self._remove_stale = script(lua.REMOVE_STALE)
        self._get_session, self._get_messages = script(lua.GET_SESSION), script(lua.GET_MESSAGES)
        self._coalescer: Coalescer | None = None
        self.self_timed: frozenset[str] = frozenset()
        if isinstance(client, Redis):
            self._coalescer = Coalescer(client, settings.redis_socket_timeout, settings.store_deadline())
            self.self_timed = frozenset({'append_messages', 'get_messages', 'get_session'})  # see `Coalescer`
        self._tenant_keys: dict[str, RedisKeys] = {}
        self._append_limits = [self._max_messages, '1' if self._limits.reject_full else '0', self._limits.max_sessions]

    async def open(self, url: str) -> None:
        """Check at start that Redis answers; the error names the URL (password masked)."""
        try:
            with unavailable():
                if isinstance(self._client, RedisCluster):
                    await self._client.initialize()
                await self._client.ping()
        except BackendUnavailable as exc:
            cause = exc.__cause__
            detail = ' '.join(str(cause).split()) or type(cause).__name__
            raise BackendUnavailable(f'Redis at {masked_url(url)} does not answer: {detail}') from None

    def _keys(self, tenant: str) -> RedisKeys:
        """The tenant's key names; one `RedisKeys` per tenant (tenants are the configured API keys' few)."""
        keys = self._tenant_keys.get(tenant)
        if keys is None:
            if len(self._tenant_keys) >= 1024:
                self._tenant_keys.clear()
            keys = self._tenant_keys[tenant] = RedisKeys(self._prefix, tenant)
        return keys

    def _call(self) -> Guard:
        """Around every operation: the Cluster's connection bound, and error translation."""
        return self._guard

    def _session_call(
        self,
        keys: RedisKeys,
        session_id: str,
        now: datetime,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[list[str], list[str | int | bytes]]:
        """KEYS and the leading ARGV of a session script (the index key only on a single Redis)."""
        record = keys.idempotency(session_id, '-' if idempotency is None else idempotency.key)
        key_list = [keys.meta(session_id), keys.msgs(session_id), record]
        if not self._cluster:
            key_list.append(keys.sessions())
        micros = to_micros(now)
        expected = _expected(expected_version)
        if idempotency is None:
            return key_list, [str(micros), self._ttl, self._cutoff(micros), session_id, expected, '', 0]
        fingerprint, ttl = idempotency.fingerprint, idempotency.ttl_seconds
        return key_list, [str(micros), self._ttl, self._cutoff(micros), session_id, expected, fingerprint, ttl]

    def _cutoff(self, micros: int) -> str:
        return str(micros - (self._ttl + INDEX_GRACE_SECONDS) * 1_000_000)

    async def _index(self, keys: RedisKeys, session_id: str, score: Any) -> None:
        """Cluster only: move the session's index entry up to `score` (never down)."""
        micros = int(score)
        await self._touch_index(keys=[keys.sessions()], args=[session_id, str(micros), self._ttl, self._cutoff(micros)])

    def _script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        """Run a script: with the concurrent ones in one pipeline on a single Redis, on its own on Cluster."""
        if self._coalescer is None:
            return script(keys=keys, args=args)
        return self._coalescer.call(script, keys, args)

    async def ping(self) -> None:
        async with self._call():
            await self._client.ping()

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        keys = self._keys(tenant)
        key_list, args = self._session_call(keys, record.id, record.updated_at, idempotency=idempotency)
        args += [str(to_micros(record.created_at)), record.metadata, str(record.version), self._limits.max_sessions]
        async with self._call():
            if self._cluster:
                await self._check_room(keys, record.id)
            status, rest = _answer(record.id, await self._script(self._create, key_list, args))
            if status == b'exists':
                return None
            if status == b'limit':
                raise SessionLimitReached(self._limits.max_sessions)
            if status == b'replay':
                created_at, metadata = _bytes(rest[0]).split(b'\n', 1)
                return _record(record.id, created_at, created_at, metadata, 0)
            if self._cluster:
                await self._index(keys, record.id, to_micros(record.updated_at))
        return record

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        keys = self._keys(tenant)
        meta, msgs = keys.meta(session_id), keys.msgs(session_id)
        if self._coalescer is not None:  # as get_messages: MULTI/EXEC (4 µs of redis-server's CPU, the script 25)
            reading = (
                [(b'HMGET', meta, *_META_FIELDS), (b'LRANGE', msgs, 0, -1)]
                if with_messages
                else [(b'HMGET', meta, *_META_FIELDS)]
            )
            fields, *messages = await self._coalescer.transaction(*reading)
            if fields[0] is None:
                return None
            return StoredSession(_record(session_id, *fields), json_array(messages[0]) if messages else b'[]')
        async with self._call():
            if with_messages:
                found = await self._script(self._get_session, [meta, msgs], ())
                if found is None:
                    return None
                fields, messages = found
            else:
                fields, messages = await self._client.hmget(meta, _META_FIELDS), []
                if fields[0] is None:
                    return None
        return StoredSession(_record(session_id, *fields), json_array(messages))

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool
    ) -> tuple[list[StoredSession], bool]:
        keys = self._keys(tenant)
        found: list[StoredSession] = []
        stale: list[str] = []
        position = after
        async with self._call():
            while len(found) <= limit:
                want = limit + 1 - len(found)
                candidates = await self._index_page(keys, position, want)
                if not candidates:
                    break
                sessions = await self._read_many(keys, [sid for sid, _ in candidates], with_messages)
                for (sid, score), session in zip(candidates, sessions, strict=True):
                    if session is None:
                        stale += [sid, str(score)]
                    else:
                        found.append(session)
                position = (candidates[-1][1], candidates[-1][0])
                if len(candidates) < want:
                    break
            if stale:
                await self._remove_stale(keys=[keys.sessions()], args=stale)
        return found[:limit], len(found) > limit

    async def _index_page(self, keys: RedisKeys, after: ListCursor | None, want: int) -> list[tuple[str, int]]:
        """Up to `want` index entries after the position `after`, newest first, ties by id descending."""
        index = keys.sessions()
        rows: list[tuple[bytes, float]]
        if after is None:
            if self._coalescer is not None:
                rows = _pairs(await self._coalescer.command(b'ZREVRANGE', index, 0, want - 1, b'WITHSCORES'))
            else:
                rows = cast(Any, await self._client.zrevrange(index, 0, want - 1, withscores=True))
            return [(_bytes(member).decode(), int(score)) for member, score in rows]
        micros, last_id = after
        last = last_id.encode()
        page: list[tuple[str, int]] = []
        offset = 0
        while len(page) < want:
            # Entries with the cursor's own score come first, in descending id order: skip those >= last id.
            if self._coalescer is not None:
                command = (b'ZREVRANGEBYSCORE', index, micros, b'-inf', b'WITHSCORES', b'LIMIT', offset, want + 1)
                rows = _pairs(await self._coalescer.command(*command))
            else:
                rows = cast(
                    Any,
                    await self._client.zrevrangebyscore(
                        index, micros, '-inf', start=offset, num=want + 1, withscores=True
                    ),
                )
            for member, score in rows:
                raw = _bytes(member)
                if int(score) < micros or raw < last:
                    page.append((raw.decode(), int(score)))
            if len(rows) < want + 1:
                break
            offset += len(rows)
        return page[:want]

    async def _read_many(
        self, keys: RedisKeys, session_ids: Sequence[str], with_messages: bool
    ) -> list[StoredSession | None]:
        """The sessions, None for the ones that are gone: on a single Redis in one coalesced transaction (through
        redis-py, a pipeline of 20 HMGETs cost ~400 µs of CPU; a Lua script of them doubled redis-server's CPU
        per listing), on Cluster in one pipeline (one round trip per node)."""
        replies: list[Any]
        if self._coalescer is not None:
            reads: list[tuple[Any, ...]] = []
            for sid in session_ids:
                reads.append((b'HMGET', keys.meta(sid), *_META_FIELDS))
                if with_messages:
                    reads.append((b'LRANGE', keys.msgs(sid), 0, -1))
            replies = await self._coalescer.transaction(*reads)
        else:
            pipe = self._client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.hmget(keys.meta(sid), _META_FIELDS)
                if with_messages:
                    pipe.lrange(keys.msgs(sid), 0, -1)
            replies = await pipe.execute()
        step = 2 if with_messages else 1
        out: list[StoredSession | None] = []
        for n, sid in enumerate(session_ids):
            fields = replies[n * step]
            if fields[0] is None:
                out.append(None)
            else:
                messages = json_array(replies[n * step + 1]) if with_messages else b'[]'
                out.append(StoredSession(_record(sid, *fields), messages))
        return out

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
        else retries. It compares the metadata itself, not the version, so appends never force a retry."""
        keys = self._keys(tenant)
        key_list, args = self._session_call(keys, session_id, now, expected_version)
        meta = keys.meta(session_id)
        async with self._call():
            for _ in range(_CAS_ATTEMPTS):
                found = await self._client.hget(meta, 'metadata')
                if found is None:
                    return None
                current = _bytes(found)
                new = apply(current)
                status, rest = _answer(session_id, await self._set_metadata(keys=key_list, args=[*args, current, new]))
                if status == b'gone':
                    return None
                if status == b'ok':
                    created_at, updated_at, version = rest
                    if self._cluster:
                        await self._index(keys, session_id, updated_at)
                    return _record(session_id, created_at, updated_at, new, version)
        raise BackendUnavailable(f'session {session_id!r} is being updated too often to apply this change; retry')

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        keys = self._keys(tenant)
        key_list = [keys.meta(session_id), keys.msgs(session_id)]
        args = [session_id, _expected(expected_version)]
        async with self._call():
            if not self._cluster:
                reply = await self._delete(keys=[*key_list, keys.sessions()], args=args)
            else:
                reply = await self._delete(keys=key_list, args=args)
                if _bytes(reply[0]) == b'ok':
                    await self._client.zrem(keys.sessions(), session_id)
        status, _ = _answer(session_id, reply)
        return status == b'ok'

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
        keys = self._keys(tenant)
        key_list, args = self._session_call(keys, session_id, now, expected_version, idempotency)
        args += self._append_limits
        args += bodies
        if self._coalescer is not None:  # the hot path: no `_call()` needed, the coalescer translates errors
            reply = await self._coalescer.call(self._append, key_list, args)
        else:
            async with self._call():
                await self._check_room(keys, session_id)
                call = self._append(keys=key_list, args=args)
                reply, _ = await self._both(call, self._index(keys, session_id, to_micros(now)))
        status, rest = _answer(session_id, reply)
        if status == b'ok':
            first = int(rest[0])
            return Appended([with_id(first + n, body) for n, body in enumerate(bodies)], int(rest[1]))
        if status == b'full':
            raise SessionFull(session_id, self._max_messages)
        if status == b'limit':
            raise SessionLimitReached(self._limits.max_sessions)
        # 'replay'
        recorded_version, *stored = _bytes(rest[0]).split(b'\n')
        return Appended(stored, int(recorded_version))

    async def _check_room(self, keys: RedisKeys, session_id: str) -> None:
        """Cluster only: the tenant's session limit, checked before a write that may create a session. The
        tenant's index is in another slot than the session, so this check is not atomic with the write: near
        the limit, concurrent creates can pass it together. (On a single Redis the scripts check it.)"""
        if not self._limits.max_sessions or await self._client.exists(keys.meta(session_id)):
            return
        if await self._client.zcard(keys.sessions()) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        keys = self._keys(tenant)
        key_list = [keys.meta(session_id), keys.msgs(session_id)]
        args = ['' if value is None else str(value) for value in (selection.limit, selection.before, selection.after)]
        if self._coalescer is None:  # Cluster
            async with self._call():
                messages = await self._get_messages(keys=key_list, args=args)
        elif selection.before is None and selection.after is None:  # the gateway's read: the last N, or all
            # Plain commands rather than the script: 3.4 µs of redis-server's CPU against 15.5. A list holds
            # messages only while its session exists (they are deleted together and expire together), so
            # messages from LRANGE alone are the answer; none means an empty or a missing session, which
            # EXISTS tells apart in one transaction with the read. (The coalescer translates errors.)
            last = -selection.limit if selection.limit else 0
            messages = await self._coalescer.command(b'LRANGE', key_list[1], last, -1)
            if not messages:
                exists, messages = await self._coalescer.transaction(
                    (b'EXISTS', key_list[0]), (b'LRANGE', key_list[1], last, -1)
                )
                messages = messages if exists else None
        else:
            messages = await self._coalescer.call(self._get_messages, key_list, args)
        return None if messages is None else json_array(messages)

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        keys = self._keys(tenant)
        key_list, args = self._session_call(keys, session_id, now, expected_version)
        async with self._call():
            status, rest = _answer(session_id, await self._clear(keys=key_list, args=args))
            if status == b'gone':
                return None
            updated_at, version = rest
            if self._cluster:
                await self._index(keys, session_id, updated_at)
        return int(version)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        raise NotSupported('semantic search needs the Chroma backend (MEMORY_TYPE=chroma); this server runs redis')

    @staticmethod
    async def _both(first: Any, second: Any) -> tuple[Any, Any]:
        """Run two commands concurrently (one round-trip time); if either fails, raise its error after both end."""
        results = await asyncio.gather(first, second, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0], results[1]
