"""The tenant's listing and metadata index on Redis (`memsvc.stores.redis` has the key layout), and its rules.

The listing `{p}:<tenant>:sessions` and the metadata index live in one slot: the index keys' hash tag is the
listing's name, `{{p}:<tenant>:sessions}:…`, and a key without a tag is in the slot of its whole name. So one script
updates the listing and the index together, on a single Redis and on Cluster alike:

    indexed       HASH  session id -> the names of the sets the session is in, one a line
    by:<k>:<v>    ZSET  session id -> updated_at (µs), as the listing: the sessions whose metadata has the
                        string <v> under the indexed key <k> (a long or unusual <v> is named by its SHA-256)
    imported      ZSET  session id -> when it was imported (µs), only with an idle TTL: the sweep below goes by the
                        listing's score, the updated_at, which an import keeps as stored while the session's TTL
                        starts again at the import; the sweep leaves a session imported less than the TTL ago

Every set a session is in is named in its `indexed` entry, so whatever moves or removes a session in the listing
does the same in its sets (`index`, `unindex` below). The sets and `indexed` expire a minute after the last session
written into them, as the listing does (the TTL setting); sessions idle past the TTL leave all of them a few at a
time on each write, and the listing drops the ones it finds gone (`REPAIR`).

On a single Redis the session scripts update the index inside the write (`redis_scripts.SESSION`): creating,
PATCHing, forking and deleting a session change its entries in the same atomic step as its metadata. On Cluster the
session is in another slot, so the store updates the index beside the write (`RedisIndex`), in an order that leaves
extra entries, not missing ones, when a process stops in between; and every read checks what the index found against
the session's own metadata and drops an entry whose session is gone or no longer matches (README, "Redis Cluster: the
repair rule").
"""

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from memsvc.stores import index as rules
from memsvc.stores.index import Where
from memsvc.stores.redis_lua import Script
from memsvc.stores.redis_transport import Transport

INDEX_GRACE_SECONDS = 60
"""How much longer than the TTL index entries and the index keys live: a margin for clock skew."""
EXPIRE_PER_WRITE = 16
"""Most sessions idle past the TTL that one write takes out of the listing and the index."""
REINDEX_BATCH = 200

# Functions of the listing and the index, for scripts that declare the listing as `sessions` (on a single Redis every
# session script, where it may be nil: on Cluster they run in the session's slot and leave it out).
INDEX = (
    """
local indexed = sessions and ('{' .. sessions .. '}:indexed')
local imported = sessions and ('{' .. sessions .. '}:imported')
local function keep(key, ttl)
  if ttl > 0 then redis.call('EXPIRE', key, ttl + """
    + str(INDEX_GRACE_SECONDS)
    + """) else redis.call('PERSIST', key) end
end
local function names_in(text)
  local names = {}
  if text then for name in string.gmatch(text, '[^\\n]+') do names[#names + 1] = name end end
  return names
end
-- Out of the listing and every set it is in.
local function unindex(id)
  for _, name in ipairs(names_in(redis.call('HGET', indexed, id))) do redis.call('ZREM', name, id) end
  redis.call('HDEL', indexed, id)
  redis.call('ZREM', sessions, id)
  redis.call('ZREM', imported, id)
end
-- Whether a listed session scored below `cutoff` is idle past the TTL: not if it was imported since (the TTL of its
-- keys started at the import, while its score is its updated_at as stored).
local function idle(id, cutoff)
  local at = redis.call('ZSCORE', imported, id)
  return not at or tonumber(at) < tonumber(cutoff)
end
-- Sessions idle past the TTL leave, from the oldest (`old`, at most EXPIRE_PER_WRITE of them). When every one of
-- those is an imported session still alive, a window further on is taken instead, so that the sweep moves on.
local function sweep(old, cutoff)
  local kept = 0
  for _, stale in ipairs(old) do
    if idle(stale, cutoff) then unindex(stale) else kept = kept + 1 end
  end
  local n = """
    + str(EXPIRE_PER_WRITE)
    + """
  if kept == n then
    local below = redis.call('ZCOUNT', sessions, '-inf', '(' .. cutoff)
    if below > n then
      local start = n + math.floor(tonumber(cutoff) / 1000) % (below - n)
      for _, stale in ipairs(redis.call('ZRANGE', sessions, start, math.min(start + n - 1, below - 1))) do
        if idle(stale, cutoff) then unindex(stale) end
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', imported, '-inf', '(' .. cutoff)
end
-- An imported session: its keys' TTL runs from `now` (µs), not from its updated_at; the sweep leaves it until then.
local function imported_at(id, now, ttl)
  if ttl > 0 then
    redis.call('ZADD', imported, now, id)
    keep(imported, ttl)
  end
end
-- At `score` in the listing and each of its sets (`gt`: never lower, as on Cluster, where this runs beside the
-- session's own script); then a few sessions idle past the TTL (below `cutoff`) leave.
local function index(id, score, ttl, cutoff, gt)
  local keys = names_in(redis.call('HGET', indexed, id))
  if #keys > 0 then keep(indexed, ttl) end
  keys[#keys + 1] = sessions
  for _, key in ipairs(keys) do
    if gt then redis.call('ZADD', key, 'GT', score, id) else redis.call('ZADD', key, score, id) end
    keep(key, ttl)
  end
  if ttl > 0 then
    local old = redis.call('ZRANGEBYSCORE', sessions, '-inf', '(' .. cutoff, 'LIMIT', 0, """
    + str(EXPIRE_PER_WRITE)
    + """)
    if #old > 0 then sweep(old, cutoff) end
  end
end
-- The sets the session is in become: those named in `added` (one a line) and, unless `replace`, those it was in but
-- the ones named in `removed`. It joins a set at `score` (never lowering a score it has there).
local function change_sets(id, added, removed, replace, score, ttl)
  local names, listed, out = {}, {}, {}
  for _, name in ipairs(names_in(removed)) do out[name] = true end
  local joining = names_in(added)
  if replace then for _, name in ipairs(joining) do listed[name] = false end end
  for _, name in ipairs(names_in(redis.call('HGET', indexed, id))) do
    if out[name] or (replace and listed[name] == nil) then
      redis.call('ZREM', name, id)
    elseif not listed[name] then
      names[#names + 1] = name
      listed[name] = true
    end
  end
  for _, name in ipairs(joining) do
    redis.call('ZADD', name, 'GT', score, id)
    keep(name, ttl)
    if not listed[name] then names[#names + 1] = name; listed[name] = true end
  end
  if #names == 0 then redis.call('HDEL', indexed, id) return end
  redis.call('HSET', indexed, id, table.concat(names, '\\n'))
  if #joining > 0 then keep(indexed, ttl) end
end
"""
)

# Cluster: what a single Redis does inside the session scripts, run beside them in the listing's slot. `added`,
# `removed`: set names, one a line ('' none); `replace` '1': the session's sets become exactly `added`.
TOUCH_INDEX = Script(
    'touch_index',
    INDEX,
    """
local ttl_ = tonumber(ttl)
if added ~= '' or removed ~= '' or replace == '1' then
  change_sets(session_id, added, removed, replace == '1', score, ttl_)
end
if imported_now ~= '' then imported_at(session_id, imported_now, ttl_) end
index(session_id, score, ttl_, cutoff, true)
return 1
""",
    keys=('sessions',),
    args=('session_id', 'score', 'ttl', 'cutoff', 'added', 'removed', 'replace', 'imported_now'),
)

# Takes each session out of the listing and the index (Cluster: after its delete).
UNINDEX = Script(
    'unindex',
    INDEX,
    """
for i = ids_from, #ARGV do unindex(ARGV[i]) end
return 1
""",
    keys=('sessions',),
    args=('*ids',),
)

# What a read found wrong, `entries` = id, score, kind, id, score, kind, …: each entry that still has the score it
# was read with in `guard` (the listing or the set the read walked) is repaired: 'gone' (no such session) leaves the
# listing and the index, 'off' (its metadata no longer has the set's value) leaves `guard`.
REPAIR = Script(
    'repair',
    INDEX,
    """
local repaired = 0
for i = entries_from, #ARGV, 3 do
  local id, score = ARGV[i], redis.call('ZSCORE', guard, ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == 'gone' then unindex(id) else change_sets(id, '', guard, false, 0, 0) end
    repaired = repaired + 1
  end
end
return repaired
""",
    keys=('sessions', 'guard'),
    args=('*entries',),
)

# A single Redis: the session's sets become exactly those named in `added`, if its metadata is still `seen` (the
# metadata they were named from); it is put in the listing and its sets at its updated_at. 'ok', 'changed', or 'gone'
# (then whatever the index held of it goes).
REINDEX = Script(
    'reindex',
    INDEX,
    """
local state = redis.call('HMGET', meta, 'metadata', 'updated_at')
if not state[1] then unindex(session_id) return 'gone' end
if state[1] ~= seen then return 'changed' end
local ttl_ = tonumber(ttl)
change_sets(session_id, added, '', true, state[2], ttl_)
index(session_id, state[2], ttl_, cutoff, true)
return 'ok'
""",
    keys=('meta', 'sessions'),
    args=('session_id', 'seen', 'added', 'ttl', 'cutoff'),
)

_PLAIN_VALUE = re.compile(r'[^\x00-\x1f\x7f]{0,100}')


def value_name(value: str) -> str:
    """How a value appears in its set's name: as it is, or, if long or holding control characters (the names are
    kept one a line), as `#` and its SHA-256. (Two values sharing a name would share a set, which every read checks
    against the metadata.)"""
    return value if _PLAIN_VALUE.fullmatch(value) else '#' + hashlib.sha256(value.encode()).hexdigest()


class IndexKeys:
    """The names of a tenant's listing and index keys (`RedisKeys` holds one)."""

    __slots__ = ('by', 'indexed', 'sessions')

    def __init__(self, sessions: str) -> None:
        self.sessions = sessions
        self.indexed = f'{{{sessions}}}:indexed'
        self.by = f'{{{sessions}}}:by:'

    def values(self, key: str, value: str) -> str:
        return f'{self.by}{key}:{value_name(value)}'


class RedisIndex:
    """The index writes and reads that are not inside the session scripts. `cutoff` gives, for a time in µs, the
    score below which a listed session is past its TTL (`RedisStore._cutoff`)."""

    def __init__(self, redis: Transport, keys: Sequence[str], ttl: int, cutoff: Callable[[int], str]) -> None:
        self._redis, self.keys, self._ttl, self._cutoff = redis, tuple(keys), ttl, cutoff
        self.beside = redis.spans_slots
        """Cluster: the index is written beside the session scripts, which leave it out."""

    def names(self, keys: IndexKeys, metadata: bytes) -> list[str]:
        """The sets a session with this metadata is in."""
        return [keys.values(key, value) for key, value in rules.entries(metadata, self.keys)]

    def names_text(self, keys: IndexKeys, metadata: bytes) -> str:
        """`names` as the scripts take them: one a line."""
        return '\n'.join(self.names(keys, metadata))

    async def touch(
        self,
        keys: IndexKeys,
        session_id: str,
        micros: int,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
        replace: bool = False,
        imported_now: int | None = None,
    ) -> None:
        """Cluster: move the session up to `micros` (never down) in the listing and its sets, after changing its
        sets (`TOUCH_INDEX`); `imported_now`: the session was imported then (µs; its idle TTL runs from then)."""
        call = TOUCH_INDEX.bind(
            sessions=keys.sessions,
            session_id=session_id,
            score=str(micros),
            ttl=self._ttl,
            cutoff=self._cutoff(micros),
            added='\n'.join(added),
            removed='\n'.join(removed),
            replace='1' if replace else '0',
            imported_now='' if imported_now is None else str(imported_now),
        )
        await self._redis.script(call)

    async def unindex(self, keys: IndexKeys, session_ids: Sequence[str]) -> None:
        await self._redis.script(UNINDEX.bind(sessions=keys.sessions, ids=session_ids))

    async def metadata_changing(
        self, keys: IndexKeys, session_id: str, seen: bytes, new: bytes, micros: int
    ) -> list[str]:
        """Cluster, before a PATCH's compare-and-set: the session joins the sets of its new metadata (so that a stop
        after the change leaves an extra entry, which reads drop, rather than a missing one). Returns the sets it is
        to leave after the change (`metadata_set`)."""
        old, now = self.names(keys, seen), self.names(keys, new)
        added = [name for name in now if name not in old]
        if added:
            await self.touch(keys, session_id, micros, added=added)
        return [name for name in old if name not in now]

    async def metadata_set(
        self, keys: IndexKeys, meta: str, session_id: str, updated: int, removed: Sequence[str]
    ) -> None:
        """Cluster, after the compare-and-set: the listing moves, and the session leaves the sets of its old metadata.
        A removal may race with another process's PATCH of the same session that put it back into one of them; so
        each removal is followed by the sets of the metadata as it is now (read again after the removal)."""
        await self.touch(keys, session_id, updated, removed=removed)
        if removed:
            await self.reassert(keys, meta, session_id)

    async def reassert(self, keys: IndexKeys, meta: str, session_id: str) -> None:
        """Cluster: the session joins the sets of its metadata as stored now (none if it is gone)."""
        metadata, updated = await self._redis.command('HMGET', meta, 'metadata', 'updated_at')
        if metadata is not None:
            await self.touch(keys, session_id, int(updated), added=self.names(keys, bytes(metadata)))

    async def reindex(self, keys: IndexKeys, meta_of: Callable[[str], str], session_ids: Sequence[str]) -> int:
        """The sets of each session become those of its stored metadata, and it is listed at its updated_at; returns
        how many of them exist. A single Redis checks each against the metadata read, atomically, and reads again
        the ones that changed meanwhile; on Cluster a PATCH racing with this can leave its session under the old value
        (an extra entry, dropped by reads) until that session's next PATCH."""
        pending, indexed = list(session_ids), 0
        while pending:
            states = await self._redis.commands(*(('HMGET', meta_of(sid), 'metadata', 'updated_at') for sid in pending))
            read = [
                (sid, None if m is None else bytes(m), int(u or 0)) for sid, (m, u) in zip(pending, states, strict=True)
            ]
            if self.beside:
                gone = [sid for sid, metadata, _ in read if metadata is None]
                if gone:
                    await self.unindex(keys, gone)
                found = [(sid, metadata, updated) for sid, metadata, updated in read if metadata is not None]
                touches = (self.touch(keys, sid, u, added=self.names(keys, m), replace=True) for sid, m, u in found)
                await asyncio.gather(*touches)
                return indexed + len(found)
            statuses = await asyncio.gather(
                *(
                    self._redis.script(
                        REINDEX.bind(
                            meta=meta_of(sid),
                            sessions=keys.sessions,
                            session_id=sid,
                            seen=metadata or b'',
                            added='' if metadata is None else self.names_text(keys, metadata),
                            ttl=self._ttl,
                            cutoff=self._cutoff(updated),
                        )
                    )
                    for sid, metadata, updated in read
                )
            )
            indexed += sum(bytes(status) == b'ok' for status in statuses)
            pending = [sid for (sid, metadata, _), status in zip(read, statuses, strict=True)
                       if metadata is not None and bytes(status) == b'changed']  # fmt: skip
        return indexed

    async def walk(self, keys: IndexKeys, meta_of: Callable[[str], str]) -> AsyncIterator[int]:
        """`reindex` for every session in the listing, in batches (ZSCAN: sessions written meanwhile, which move in
        the listing, are still visited); yields how many each batch indexed."""
        cursor: int | str = 0
        while True:
            cursor, rows = await self._redis.command('ZSCAN', keys.sessions, cursor, 'COUNT', REINDEX_BATCH)
            ids = _members(rows)
            if ids:
                yield await self.reindex(keys, meta_of, ids)
            if int(cursor) == 0:
                return

    async def candidates_key(self, keys: IndexKeys, where: Where) -> str | None:
        """The set a filtered read walks: the smallest of its entries' sets (None: one is empty, nothing matches)."""
        names = [keys.values(key, value) for key, value in where]
        if len(names) == 1:
            return names[0]
        sizes = await self._redis.commands(*(('ZCARD', name) for name in names))
        if not all(sizes):
            return None
        return min(zip(sizes, names, strict=True))[1]

    async def repair(self, keys: IndexKeys, guard: str, entries: Sequence[str]) -> None:
        if entries:
            await self._redis.script(REPAIR.bind(sessions=keys.sessions, guard=guard, entries=entries))


def _members(rows: Any) -> list[str]:
    """The members of a ZSCAN page (member, score, … as Redis sends it; pairs as redis-py's Cluster client gives it)."""
    if rows and isinstance(rows[0], list | tuple):
        return [bytes(member).decode() for member, _ in rows]
    return [bytes(rows[n]).decode() for n in range(0, len(rows), 2)]
