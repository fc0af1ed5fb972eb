"""Export and import on Redis (`redis.RedisStore`; `stores/base.py` has the contract, `memsvc.export` and
`memsvc.importer` use it).

Export order. The tenant's index (`{p}:<tenant>:sessions`) moves while an export runs: a session written meanwhile
goes to its top, so paging it by position or score would miss or repeat sessions. An export therefore first copies it,
a `ZSCAN` page at a time (each a few hundred microseconds of Redis), into a snapshot of its own,
`{p}:<tenant>:export:<nonce>` (ZSET, the same scores; it expires `SNAPSHOT_TTL_SECONDS` after the last page read,
and is deleted when the export ends). A ZSCAN returns every entry present from its start to its end at least once and
the snapshot, a set, keeps each once; the snapshot then pages newest first by rank, and nothing moves in it. A
session created after the export began is not in it; one deleted since is skipped (its read finds nothing).

Reads. `EXPORT_READ` reads, in one script, a session's meta, its summary and its messages after an id: at most
`limit`, and no more than `budget` bytes, in LRANGEs of 64, so no reply and no step is large.

Import. As a fork does (`redis_fork`), an import writes its messages into two hidden lists under the session's own
hash tag, named by a nonce only this import holds and expiring `FORK_HIDDEN_TTL_SECONDS` after the last chunk,

    {p}:{<tenant>/<id>}:import:<nonce>:msgs     LIST  the messages, oldest first
    {p}:{<tenant>/<id>}:import:<nonce>:counts   LIST  their records

a chunk at a time (one MULTI/EXEC of RPUSH and EXPIRE), and `IMPORT_PUBLISH` makes them the session in one atomic
step: it checks that the id is free (or, replacing, takes the place of the session there: its lists UNLINKed, so
Redis frees them in the background), that the hidden lists hold every message written, and the tenant's session
limit; renames the lists, writes the meta (the line's created_at and updated_at, version 0, or the replaced session's
+ 1), the summary, the TTLs and the listing's and metadata index's entries (scored by the line's updated_at). On
Cluster the index is updated right after, as for a create. An import that fails drops its hidden lists; one that
stops leaves them to expire.

The idle TTL (`MEMSVC_SESSION_TTL_SECONDS`) starts again at import (SPEC-2 §3): an imported session's keys expire the
TTL after the import, whatever its updated_at, which is kept as stored (and scores it in the listing and the index, as
every session's). The writes' sweep of sessions idle past the TTL goes by that score, so the import also records the
session in the listing slot's `imported` ZSET (id -> the import's time), and the sweep leaves a session imported
less than the TTL ago (`redis_index.INDEX`: `idle`, `sweep`).
"""

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from memsvc.errors import BackendUnavailable, SessionExists, SessionLimitReached
from memsvc.models import SessionRecord, to_micros, utc_now
from memsvc.stores import gaps as ids
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import FORK_HIDDEN_TTL_SECONDS, ExportRead, SessionImage
from memsvc.stores.redis_lua import Script
from memsvc.stores.redis_reads import as_bytes, session_record

if TYPE_CHECKING:
    from memsvc.stores.redis import RedisStore
    from memsvc.stores.redis_reads import RedisKeys

SCAN_COUNT: Final = 500
EXPORT_PAGE: Final = 500
SNAPSHOT_TTL_SECONDS: Final = 3600

# {created_at, updated_at, metadata, version, forked_from, next_id, gaps, held, summary, messages}; false: no session.
EXPORT_READ = Script(
    'export_read',
    lua.GAPS,
    """
local state = redis.call('HMGET', meta, 'created_at', 'updated_at', 'metadata', 'version', 'forked_from', 'next_id',
                         'gaps')
if not state[1] then return false end
local held = redis.call('LLEN', msgs)
local next_id, list = tonumber(state[6]), gaps_of(state[7])
local position = stored_below(list, next_id - held - missing(list), next_id, tonumber(after) + 1)
local out, size, most, room, full = {}, 0, tonumber(limit), tonumber(budget), false
while not full and position < held and #out < most do
  local batch = redis.call('LRANGE', msgs, position, position + math.min(63, most - #out - 1))
  for _, message in ipairs(batch) do
    if #out > 0 and size + #message + 1 > room then full = true break end
    out[#out + 1] = message
    size = size + #message + 1
  end
  position = position + #batch
end
return {state[1], state[2], state[3], state[4], state[5] or '', state[6], state[7] or '', held,
        redis.call('GET', summary) or '', out}
""",
    keys=('meta', 'msgs', 'summary'),
    args=('after', 'limit', 'budget'),
)

# `count` messages are in the hidden lists; the rest are the session's fields ('' for none); its keys get the whole
# idle TTL from now. 'ok'; or 'exists', 'limit', 'lost' (the hidden lists do not hold every message written).
IMPORT_PUBLISH = Script(
    'import_publish',
    lua.SESSION.source,
    lua.ROOM,
    """
local function drop() redis.call('DEL', copy_msgs, copy_counts) end
local n = tonumber(count)
if redis.call('LLEN', copy_msgs) ~= n or redis.call('LLEN', copy_counts) ~= n then drop() return {'lost'} end
local version = redis.call('HGET', meta, 'version')
if version and replace ~= '1' then drop() return {'exists'} end
if not version and not room() then drop() return {'limit'} end
redis.call('UNLINK', msgs, counts)
redis.call('DEL', summary, meta)
if n > 0 then
  redis.call('RENAME', copy_msgs, msgs)
  redis.call('RENAME', copy_counts, counts)
end
redis.call('HSET', meta, 'created_at', created_at, 'updated_at', updated_at, 'metadata', metadata, 'next_id', next_id,
           'version', version and string.format('%d', tonumber(version) + 1) or '0')
if forked_from ~= '' then redis.call('HSET', meta, 'forked_from', forked_from) end
if gaps ~= '' then redis.call('HSET', meta, 'gaps', gaps) end
if text ~= '' then redis.call('SET', summary, text) end
for _, key in ipairs({meta, msgs, counts, summary}) do
  if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
if sessions then
  imported_at(session_id, now, ttl)  -- before `index`, whose sweep would take a session updated long ago
  change_sets(session_id, entries, '', true, updated_at, ttl)
  index(session_id, updated_at, ttl, cutoff, false)
end
if version then notify('deleted') end
return {'ok'}
""",
    keys=('meta', 'msgs', 'counts', 'summary', 'idem', 'idems', 'copy_msgs', 'copy_counts', 'sessions?'),
    args=(
        'now',
        'ttl',
        'cutoff',
        'session_id',
        'expected',
        'fingerprint',
        'idem_ttl',
        'max_sessions',
        'replace',
        'count',
        'created_at',
        'updated_at',
        'metadata',
        'next_id',
        'forked_from',
        'gaps',
        'text',
        'entries',
    ),
)


def _scanned(reply: Any) -> tuple[int, list[Any]]:
    """A ZSCAN reply as (next cursor, [score, member, score, member, …]), as Redis sends it (RESP2 or RESP3) or as
    redis-py's Cluster client parses it ((member, score) pairs)."""
    cursor, items = reply
    flat: list[Any] = []
    for item in items:
        flat.extend(item if isinstance(item, list | tuple) else [item])
    scored = [value for n in range(0, len(flat), 2) for value in (_score(flat[n + 1]), flat[n])]
    return int(cursor), scored


def _score(value: Any) -> Any:
    """A score as ZADD takes it: Redis's text, or (from redis-py) a float written out in full."""
    return f'{value:.0f}' if isinstance(value, float) else value


class RedisTransfers:
    def __init__(self, store: 'RedisStore') -> None:
        self._store = store
        self._redis = store._redis

    async def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        redis, keys = self._redis, self._store._keys(tenant)
        index, snapshot = keys.sessions(), keys.export_snapshot(uuid.uuid4().hex)
        try:
            cursor = None
            while cursor != 0:
                cursor, scored = _scanned(await redis.command('ZSCAN', index, cursor or 0, 'COUNT', SCAN_COUNT))
                if scored:
                    await redis.transaction(('ZADD', snapshot, *scored), ('EXPIRE', snapshot, SNAPSHOT_TTL_SECONDS))
            start = 0
            while True:
                page, _ = await redis.transaction(
                    ('ZREVRANGE', snapshot, start, start + EXPORT_PAGE - 1), ('EXPIRE', snapshot, SNAPSHOT_TTL_SECONDS)
                )
                if not page:
                    return
                yield [as_bytes(member).decode() for member in page]
                start += EXPORT_PAGE
        finally:
            with contextlib.suppress(BackendUnavailable):
                await redis.command('UNLINK', snapshot)

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        keys = self._store._keys(tenant)
        call = EXPORT_READ.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            summary=keys.summary(session_id),
            after=str(after),
            limit=str(limit),
            budget=str(budget),
        )
        reply = await self._redis.script(call)
        if not reply:
            return None
        created_at, updated_at, metadata, version, forked_from, next_id, gaps_text, held, summary, messages = reply
        record = session_record(session_id, created_at, updated_at, metadata, version, forked_from)
        gaps, next_id, held = ids.parse(as_bytes(gaps_text)), int(next_id), int(held)
        image = SessionImage(record, next_id, as_bytes(summary))
        first = next_id - held - ids.missing(gaps)
        return ExportRead(image, first, gaps, held, [as_bytes(message) for message in messages])

    @contextlib.asynccontextmanager
    async def importing(self, tenant: str, image: SessionImage, *, replace: bool) -> AsyncIterator['RedisImport']:
        writer = RedisImport(self._store, tenant, image, replace)
        try:
            yield writer
        finally:
            if not writer.published:
                with contextlib.suppress(BackendUnavailable):
                    await self._redis.command('DEL', *writer.copy)


class RedisImport:
    def __init__(self, store: 'RedisStore', tenant: str, image: SessionImage, replace: bool) -> None:
        self._store, self._redis, self._image, self._replace = store, store._redis, image, replace
        self._session_id = session_id = image.record.id
        self._keys: RedisKeys = store._keys(tenant)
        self.copy = self._keys.import_copy(session_id, uuid.uuid4().hex)
        self.published = False
        self._count = 0

    async def write(self, messages: list[bytes], records: list[int]) -> None:
        msgs, counts = self.copy
        await self._redis.transaction(
            ('RPUSH', msgs, *messages),
            ('RPUSH', counts, *records),
            ('EXPIRE', msgs, FORK_HIDDEN_TTL_SECONDS),
            ('EXPIRE', counts, FORK_HIDDEN_TTL_SECONDS),
        )
        self._count += len(messages)

    async def publish(self, gaps: ids.Gaps) -> None:
        store, keys, session_id, image = self._store, self._keys, self._session_id, self._image
        if store._index_beside and not self._replace:
            await store._check_room(keys, session_id)
        record: SessionRecord = image.record
        micros = to_micros(utc_now())
        call = IMPORT_PUBLISH.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            summary=keys.summary(session_id),
            idem=keys.idempotency(session_id, '-'),
            idems=keys.idems(session_id),
            copy_msgs=self.copy[0],
            copy_counts=self.copy[1],
            sessions=None if store._index_beside else keys.sessions(),
            now=str(micros),
            ttl=store._ttl,
            cutoff=store._cutoff(micros),
            session_id=session_id,
            expected='',
            fingerprint='',
            idem_ttl=0,
            max_sessions=store._limits.max_sessions,
            replace='1' if self._replace else '0',
            count=self._count,
            created_at=str(to_micros(record.created_at)),
            updated_at=str(to_micros(record.updated_at)),
            metadata=record.metadata,
            next_id=str(image.next_id),
            forked_from=record.forked_from,
            gaps=ids.format(gaps),
            text=image.summary,
            entries='' if store._index_beside else store._index.names_text(keys.index, record.metadata),
        )
        status = as_bytes((await self._redis.script(call))[0])
        if status == b'exists':
            raise SessionExists(session_id)
        if status == b'limit':
            raise SessionLimitReached(store._limits.max_sessions)
        if status == b'lost':
            raise BackendUnavailable(f'the import of {session_id!r} expired before it was published; import again')
        self.published = True
        if store._index_beside:
            names = store._index.names(keys.index, record.metadata)
            await store._index.touch(
                keys.index,
                session_id,
                to_micros(record.updated_at),
                added=names,
                replace=True,
                imported_now=micros,
            )
