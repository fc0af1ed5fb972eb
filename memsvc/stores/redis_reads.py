"""The read side of the Redis store (`redis.RedisStore`, whose docstring has the key layout): the key names, and
the reads of sessions, the listing, messages and the summary.

Reads are plain commands where they can be, which cost redis-server less CPU than a script doing the same reads:
the last N messages are one LRANGE (with EXISTS in a MULTI/EXEC only when the list is empty, to tell an empty
session from a missing one), a session is a MULTI/EXEC of HMGET and LRANGE, the context window's first read a
MULTI/EXEC of five commands (READ_WINDOW only for a session whose leading system/developer run it must read too).
A read by id range (before/after) runs GET_MESSAGES, which maps ids to positions (across the session's gaps, when
it has some).
"""

import functools
from collections.abc import Sequence
from typing import Any, Final

import orjson

from memsvc.context import message_id
from memsvc.errors import SummaryNotFound
from memsvc.models import SessionRecord, StoredSession, from_micros, json_array
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import CountedPage, ListCursor, MessageRange, WindowRead, is_instruction
from memsvc.stores.index import Where, matches
from memsvc.stores.redis_index import IndexKeys, RedisIndex
from memsvc.stores.redis_lua import Script
from memsvc.stores.redis_transport import Command, Transport


class RedisKeys:
    """The one place key names are built (with `IndexKeys`, the listing's and the metadata index's, `index`)."""

    __slots__ = ('index', 'prefix', 'tenant')

    def __init__(self, prefix: str, tenant: str) -> None:
        if any(c in tenant for c in '{}'):
            raise ValueError(f'tenant {tenant!r} cannot be part of a Redis key')
        self.prefix, self.tenant = prefix, tenant
        self.index = IndexKeys(f'{prefix}:{tenant}:sessions')

    def base(self, session_id: str) -> str:
        """What the names of the session's keys start with (`meta` and the others add a suffix)."""
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:'

    def meta(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:meta'

    def msgs(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:msgs'

    def counts(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:counts'

    def summary(self, session_id: str) -> str:
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:summary'

    def idempotency(self, session_id: str, key: str) -> str:
        """The record of an Idempotency-Key (`key` is its digest), beside the session it wrote to."""
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:idem:{key}'

    def idems(self, session_id: str) -> str:
        """The names of the session's `idempotency` records, for an erasure to find them."""
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:idems'

    def sessions(self) -> str:
        return self.index.sessions

    def events(self, session_id: str) -> str:
        """The session's wake-up channel, which its scripts publish to (`redis_scripts.NOTIFY`)."""
        return f'{self.prefix}:{{{self.tenant}/{session_id}}}:events'

    def fork_copy(self, session_id: str, nonce: str) -> tuple[str, str]:
        """The hidden lists (messages, records) a fork into `session_id` copies into (`redis_fork`)."""
        stem = f'{self.prefix}:{{{self.tenant}/{session_id}}}:fork:{nonce}'
        return f'{stem}:msgs', f'{stem}:counts'

    def import_copy(self, session_id: str, nonce: str) -> tuple[str, str]:
        """The hidden lists (messages, records) an import of `session_id` writes into (`redis_transfer`)."""
        stem = f'{self.prefix}:{{{self.tenant}/{session_id}}}:import:{nonce}'
        return f'{stem}:msgs', f'{stem}:counts'

    def export_snapshot(self, nonce: str) -> str:
        """The copy of the tenant's index an export walks (`redis_transfer`)."""
        return f'{self.prefix}:{self.tenant}:export:{nonce}'


_META_FIELDS = ('created_at', 'updated_at', 'metadata', 'version', 'forked_from')


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _pairs(reply: list[Any]) -> list[tuple[bytes, float]]:
    """The reply of a ZREVRANGE... WITHSCORES as (member, score) pairs, in RESP3 (redis-py's default) or RESP2."""
    if reply and isinstance(reply[0], list):
        return [(member, float(score)) for member, score in reply]
    return [(reply[n], float(reply[n + 1])) for n in range(0, len(reply), 2)]


def session_record(
    session_id: str, created_at: Any, updated_at: Any, metadata: Any, version: Any, forked_from: Any = None
) -> SessionRecord:
    return SessionRecord(
        session_id,
        from_micros(int(created_at)),
        from_micros(int(updated_at)),
        bytes(metadata),
        int(version),
        b'' if forked_from is None else bytes(forked_from),
    )


def window_read(keys: RedisKeys, session_id: str, first: int) -> tuple[Command, ...]:
    """The context window's first read (`RedisReads.read_window`), as commands of one MULTI/EXEC: the session's
    length, the messages and records from position `first` (negative: from the end) on, its oldest message and
    its summary. A session's list exists only while the session does, so an empty one is read again with
    `EXISTS` (`window_read_of_empty`)."""
    msgs = keys.msgs(session_id)
    return (
        ('LLEN', msgs),
        ('LRANGE', msgs, first, -1),
        ('LRANGE', keys.counts(session_id), first, -1),
        ('LINDEX', msgs, 0),
        ('GET', keys.summary(session_id)),
    )


def window_read_of_empty(keys: RedisKeys, session_id: str, first: int) -> tuple[Command, ...]:
    """`window_read` after `EXISTS` on the session: for a session whose list `window_read` found empty."""
    return (('EXISTS', keys.meta(session_id)), *window_read(keys, session_id, first))


WINDOW_READ_COMMANDS: Final = 5


@functools.lru_cache(maxsize=64)
def _window_read_template(first: int) -> bytes:
    """`packed_window_read`'s formatting, its position filled in: `first` is one of few (`window.page_size`)."""
    position = b'$%d\r\n%d\r\n' % (len(b'%d' % first), first)
    return (
        b'*1\r\n$5\r\nMULTI\r\n'
        b'*2\r\n$4\r\nLLEN\r\n$%d\r\n%smsgs\r\n'
        b'*4\r\n$6\r\nLRANGE\r\n$%d\r\n%smsgs\r\n' + position + b'$2\r\n-1\r\n'
        b'*4\r\n$6\r\nLRANGE\r\n$%d\r\n%scounts\r\n' + position + b'$2\r\n-1\r\n'
        b'*3\r\n$6\r\nLINDEX\r\n$%d\r\n%smsgs\r\n$1\r\n0\r\n'
        b'*2\r\n$3\r\nGET\r\n$%d\r\n%ssummary\r\n'
        b'*1\r\n$4\r\nEXEC\r\n'
    )


def packed_window_read(base: bytes, first: int) -> bytes:
    """`window_read` in RESP, MULTI and EXEC included, for the session whose keys start with `base`
    (`RedisKeys.base`): one bytes formatting, where packing the commands one by one costs more than the rest of
    the read in memsvc."""
    n = len(base)  # each key as its length and its common start
    return _window_read_template(first) % (n + 4, base, n + 4, base, n + 6, base, n + 4, base, n + 7, base)


# The context window's first read (`base.WindowRead`), one atomic step: {held, oldest id, the newest `limit`
# messages ('' = all), their records (of the last ones only when the first have none, as GET_COUNTED), the leading
# system/developer run (at most `head` messages; only when the newest do not reach the oldest), its records ('0'
# for none), the summary or false}; false: no session. The oldest id is read from the oldest message, not derived
# from next_id and LLEN: ids need not be consecutive.
READ_WINDOW = Script(
    'read_window',
    """
local function instruction(position, offset)
  local value = position >= offset and redis.call('LINDEX', counts, position - offset)
  if value and value ~= '0' then return tonumber(string.sub(value, -2)) % 4 == 3 end
  local message = redis.call('LINDEX', msgs, position)
  local comma = string.find(message, ',', 1, true)
  return string.sub(message, comma + 1, comma + 15) == '"role":"system"'
    or string.sub(message, comma + 1, comma + 18) == '"role":"developer"'
end
if redis.call('EXISTS', meta) == 0 then return false end
local held = redis.call('LLEN', msgs)
local limit_ = tonumber(limit)
local lo = 0
if limit_ and held > limit_ then lo = held - limit_ end
local offset = held - redis.call('LLEN', counts)
local messages, records, run, run_records, oldest = {}, {}, {}, {}, '0'
if held > 0 then
  messages = redis.call('LRANGE', msgs, lo, -1)
  if held - 1 >= offset then records = redis.call('LRANGE', counts, math.max(lo - offset, 0), -1) end
  local first = messages[1]
  if lo > 0 then first = redis.call('LINDEX', msgs, 0) end
  oldest = string.match(first, '^{"id":(%d+),')
  if lo > 0 then
    local length, bound = 0, math.min(tonumber(head), held)
    while length < bound and instruction(length, offset) do length = length + 1 end
    if length > 0 then
      run = redis.call('LRANGE', msgs, 0, length - 1)
      for p = 0, length - 1 do run_records[p + 1] = p >= offset and redis.call('LINDEX', counts, p - offset) or '0' end
    end
  end
end
return {held, oldest, messages, records, run, run_records, redis.call('GET', summary)}
""",
    keys=('meta', 'msgs', 'counts', 'summary'),
    args=('limit', 'head'),
)


class RedisReads:
    """The reads of `RedisStore`, over its transport."""

    _redis: Transport
    _prefix: str
    _tenant_keys: dict[str, RedisKeys]
    _index: RedisIndex

    def _keys(self, tenant: str) -> RedisKeys:
        """The tenant's key names; one `RedisKeys` per tenant (tenants are the configured API keys' few)."""
        keys = self._tenant_keys.get(tenant)
        if keys is None:
            if len(self._tenant_keys) >= 1024:
                self._tenant_keys.clear()
            keys = self._tenant_keys[tenant] = RedisKeys(self._prefix, tenant)
        return keys

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        keys = self._keys(tenant)
        meta = ('HMGET', keys.meta(session_id), *_META_FIELDS)
        if with_messages:
            fields, messages = await self._redis.transaction(meta, ('LRANGE', keys.msgs(session_id), 0, -1))
        else:
            fields, messages = (await self._redis.transaction(meta))[0], None
        if fields[0] is None:
            return None
        return StoredSession(session_record(session_id, *fields), b'[]' if messages is None else json_array(messages))

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool, where: Where = ()
    ) -> tuple[list[StoredSession], bool]:
        """Walks the listing, or with `where` the smallest of its sets, and reads each session found; what the index
        found is checked against the session read: an entry whose session is gone or (Cluster, after a stop in the
        middle of a PATCH) no longer matches is never returned, the walk reads further to fill the page, and the
        entry is repaired (`redis_index.REPAIR`)."""
        keys = self._keys(tenant)
        walked = keys.sessions() if not where else await self._index.candidates_key(keys.index, where)
        if walked is None:
            return [], False
        found: list[StoredSession] = []
        wrong: list[str] = []
        position = after
        while len(found) <= limit:
            want = limit + 1 - len(found)
            candidates = await self._index_page(walked, position, want)
            if not candidates:
                break
            sessions = await self._read_many(keys, [sid for sid, _ in candidates], with_messages)
            for (sid, score), session in zip(candidates, sessions, strict=True):
                if session is None:
                    wrong += [sid, str(score), 'gone']
                elif where and not matches(session.record.metadata, where):
                    wrong += [sid, str(score), 'off']
                else:
                    found.append(session)
            position = (candidates[-1][1], candidates[-1][0])
            if len(candidates) < want:
                break
        await self._index.repair(keys.index, walked, wrong)
        return found[:limit], len(found) > limit

    async def _index_page(self, index: str, after: ListCursor | None, want: int) -> list[tuple[str, int]]:
        """Up to `want` entries of the listing or set `index` after the position `after`, newest first, ties by id
        descending."""
        if after is None:
            rows = _pairs(await self._redis.command('ZREVRANGE', index, 0, want - 1, 'WITHSCORES'))
            return [(as_bytes(member).decode(), int(score)) for member, score in rows]
        micros, last_id = after
        last = last_id.encode()
        page: list[tuple[str, int]] = []
        offset = 0
        while len(page) < want:
            # Entries with the cursor's own score come first, in descending id order: skip those >= last id.
            command = ('ZREVRANGEBYSCORE', index, micros, '-inf', 'WITHSCORES', 'LIMIT', offset, want + 1)
            rows = _pairs(await self._redis.command(*command))
            for member, score in rows:
                raw = as_bytes(member)
                if int(score) < micros or raw < last:
                    page.append((raw.decode(), int(score)))
            if len(rows) < want + 1:
                break
            offset += len(rows)
        return page[:want]

    async def _read_many(
        self, keys: RedisKeys, session_ids: Sequence[str], with_messages: bool
    ) -> list[StoredSession | None]:
        """The sessions, None for the ones that are gone, in one round trip (per node): plain commands, which
        cost redis-server less than a script reading the same."""
        reads: list[tuple[Any, ...]] = []
        for sid in session_ids:
            reads.append(('HMGET', keys.meta(sid), *_META_FIELDS))
            if with_messages:
                reads.append(('LRANGE', keys.msgs(sid), 0, -1))
        replies = await self._redis.commands(*reads)
        step = 2 if with_messages else 1
        out: list[StoredSession | None] = []
        for n, sid in enumerate(session_ids):
            fields = replies[n * step]
            if fields[0] is None:
                out.append(None)
            else:
                messages = json_array(replies[n * step + 1]) if with_messages else b'[]'
                out.append(StoredSession(session_record(sid, *fields), messages))
        return out

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        keys = self._keys(tenant)
        meta, msgs = keys.meta(session_id), keys.msgs(session_id)
        if selection.before is None and selection.after is None:  # the gateway's read: the last N, or all
            # Plain commands rather than a script, as they cost redis-server less. A list holds messages only
            # while its session exists (they are deleted together and expire together), so messages from
            # LRANGE alone are the answer; none means an empty or a missing session, which EXISTS tells
            # apart in one transaction with the read.
            last = -selection.limit if selection.limit else 0
            messages = await self._redis.command('LRANGE', msgs, last, -1)
            if not messages:
                exists, messages = await self._redis.transaction(('EXISTS', meta), ('LRANGE', msgs, last, -1))
                messages = messages if exists else None
        else:
            limit, before, after = (
                '' if v is None else str(v) for v in (selection.limit, selection.before, selection.after)
            )
            call = lua.GET_MESSAGES.bind(meta=meta, msgs=msgs, limit=limit, before=before, after=after)
            messages = await self._redis.script(call)
        return None if messages is None else json_array(messages)

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage | None:
        keys = self._keys(tenant)
        limit, before, after = (
            '' if v is None else str(v) for v in (selection.limit, selection.before, selection.after)
        )
        call = lua.GET_COUNTED.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            limit=limit,
            before=before,
            after=after,
        )
        reply = await self._redis.script(call)
        if not reply:
            return None
        held, messages, records = reply
        uncounted = len(messages) - len(records)  # the oldest, stored before records were
        values = [0] * uncounted + [int(value) for value in records]
        return CountedPage([(as_bytes(m), v) for m, v in zip(messages, values, strict=True)], int(held))

    async def get_summary(self, tenant: str, session_id: str) -> bytes | None:
        keys = self._keys(tenant)
        exists, summary = await self._redis.transaction(
            ('EXISTS', keys.meta(session_id)), ('GET', keys.summary(session_id))
        )
        if not exists:
            return None
        if summary is None:
            raise SummaryNotFound(session_id)
        return as_bytes(summary)

    async def read_window(self, tenant: str, session_id: str, limit: int | None, head: int) -> WindowRead | None:
        """Plain commands in one MULTI/EXEC, which cost redis-server far less than READ_WINDOW: the count, the
        newest `limit` messages and records, the oldest message and the summary. An empty list is read again with
        EXISTS (a missing session has none). The script runs only when the session has a leading
        system/developer run that the newest messages do not reach (its oldest message is one), to read that run
        in the same atomic step."""
        keys = self._keys(tenant)
        first = -limit if limit is not None else 0
        held, messages, records, oldest, summary = await self._redis.packed_transaction(
            packed_window_read(keys.base(session_id).encode(), first),
            WINDOW_READ_COMMANDS,
            lambda: window_read(keys, session_id, first),
        )
        if not held:
            exists, held, messages, records, oldest, summary = await self._redis.transaction(
                *window_read_of_empty(keys, session_id, first)
            )
            if not exists:
                return None
            if not held:
                return WindowRead([], [], 0, 0, [], [], summary)
        if len(messages) < held and is_instruction(oldest, 0):
            return await self._read_window_script(keys, session_id, limit, head)
        values = orjson.loads(b'[%s]' % b','.join(records))  # one parse for all the decimal records
        if len(values) < len(messages):  # the oldest, stored before records were
            values[:0] = [0] * (len(messages) - len(values))
        return WindowRead(messages, values, held, message_id(oldest), [], [], summary)

    async def _read_window_script(
        self, keys: RedisKeys, session_id: str, limit: int | None, head: int
    ) -> WindowRead | None:
        call = READ_WINDOW.bind(
            meta=keys.meta(session_id),
            msgs=keys.msgs(session_id),
            counts=keys.counts(session_id),
            summary=keys.summary(session_id),
            limit='' if limit is None else str(limit),
            head=head,
        )
        reply = await self._redis.script(call)
        if not reply:
            return None
        held, oldest, messages, records, run, run_records, summary = reply
        values = list(map(int, records))
        if len(values) < len(messages):  # the oldest, stored before records were
            values[:0] = [0] * (len(messages) - len(values))
        return WindowRead(messages, values, int(held), int(oldest), run, list(map(int, run_records)), summary)
