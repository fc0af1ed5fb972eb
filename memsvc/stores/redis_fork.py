"""Forks on Redis: a copy made in bounded steps, out of sight, published by one atomic script.

Keys (beside those of `memsvc.stores.redis`): a fork into `<id>` copies into two hidden lists under the new
session's own hash tag, named with a nonce of this fork,

    {p}:{<tenant>/<id>}:fork:<nonce>:msgs     LIST  the copied messages, oldest first
    {p}:{<tenant>/<id>}:fork:<nonce>:counts   LIST  their records (0 for a message stored without one)

which no read, listing or search names (they are found only by their nonce, which only the fork holds), and which
expire `FORK_HIDDEN_TTL_SECONDS` after the last chunk written to them.

Steps:
1. At once: the source's state (a MULTI/EXEC in its slot: created_at, next_id, LLEN) and, in the target's slot, the
   Idempotency-Key's record and whether the id is taken. A recorded key answers the fork as it is now; then 404
   (no source, or `through_id` not stored), 409 (the id is taken).
2. Chunks, oldest first: each read of the source (in its slot) is sent with the write of the chunk before it (a
   MULTI/EXEC of RPUSH and EXPIRE on the hidden lists, in the target's slot): one round-trip time per chunk. A
   read is a MULTI/EXEC of the source's state (next_id, gaps, the two lengths) and plain LRANGEs of the positions
   where that state last put the chunk's ids (`_Layout`); when the state read with them moved those positions
   (a message before the chunk deleted or trimmed meanwhile), the chunk is read again by id (`GET_COUNTED`).
   Plain LRANGEs, not a script: a script copies every message into Lua and out again, which for 1,000 messages
   held Redis 1.5 ms and more, the LRANGE a tenth of that. A chunk holds at most `CHUNK_MESSAGES` messages and
   about `CHUNK_BYTES` bytes (its size follows the sizes of the messages read so far), so no single command holds
   Redis for more than about a millisecond and no reply or write holds the event loop for more than a few.
   A chunk that does not start at the id asked for, or is short, means the source lost those messages (trimmed,
   cleared, deleted): 409 `fork_source_changed`.
3. Check the source again (sent with the last chunk's write): the same session (created_at: not deleted and made
   again), still holding `through_id` (not cleared, not trimmed past it; else 409 `fork_source_changed`). Messages
   never change once stored, so the copy is the source's history up to `through_id`. Its metadata and summary
   are read here.
4. Publish (`FORK_PUBLISH`, in the target's slot, atomic): the key's record and the id are checked again (an
   append or create of the id while the copy ran wins, and the fork answers 409), the hidden lists must hold
   the whole copy (else 503: they expired), then they are renamed to the new session's lists and its meta,
   summary, TTLs, index entries (single Redis) and Idempotency-Key record are written. On Cluster the index is
   updated right after, as for a create: this step is the only one that spans two slots.

A fork that fails on the way deletes its hidden lists; one that stops (a crash, a lost connection) leaves them to
expire. A source deleted or cleared between step 3 and step 4 does not undo the fork: it is a copy of the source
as step 3 saw it. Appends to the source after `through_id` never matter.
"""

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, Final

from memsvc.errors import (
    BackendUnavailable,
    ForkSourceChanged,
    IdempotencyKeyReused,
    MessageNotFound,
    SessionExists,
    SessionLimitReached,
    SessionNotFound,
)
from memsvc.models import SessionRecord, StoredSession, fork_origin, json_array, to_micros
from memsvc.stores import gaps as ids
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import FORK_HIDDEN_TTL_SECONDS, Fork, Idempotency, summary_through
from memsvc.stores.redis_lua import Script

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from memsvc.stores.redis import RedisStore
    from memsvc.stores.redis_reads import RedisKeys
    from memsvc.stores.redis_transport import Command

CHUNK_MESSAGES: Final = 2000
"""Most messages one step copies. Against 1,000 (and 512 KiB), half the round trips: a 10,000-message fork takes 9
in all, and on a loaded machine each costs a wait for a core on both sides. A step of 2,000 messages of 400 B took
Redis 0.5-1 ms per command (LRANGE, RPUSH), and its longest event-loop turn took 2.4 ms of CPU in a fork of 10,000
messages, 3-5 ms in one of 100,000 (load 7 on this 2-core VM; 1.5-4 ms with chunks of 1,000)."""
CHUNK_BYTES: Final = 1024 * 1024
"""About the most bytes one step copies (at least one message)."""
FIRST_CHUNK: Final = 256

# `count` messages are in the hidden lists `copy_msgs` and `copy_counts`; `next_id`, `metadata`, `forked_from`,
# `gaps` ('' for none), `text` (the summary, '' for none) and `entries` (its metadata index sets) are the new
# session's. 'ok'; or 'replay', 'reused', 'exists', 'limit', 'lost' (the hidden lists do not hold the whole copy).
FORK_PUBLISH = Script(
    'fork_publish',
    lua.SESSION.source,
    lua.ROOM,
    """
local function drop() redis.call('DEL', copy_msgs, copy_counts) end
local answer = recorded()
if answer then drop() return answer end
if redis.call('EXISTS', meta) == 1 then drop() return {'exists'} end
if not room() then drop() return {'limit'} end
local n = tonumber(count)
if redis.call('LLEN', copy_msgs) ~= n or redis.call('LLEN', copy_counts) ~= n then drop() return {'lost'} end
redis.call('DEL', msgs, counts, summary)
if n > 0 then
  redis.call('RENAME', copy_msgs, msgs)
  redis.call('RENAME', copy_counts, counts)
end
redis.call('HSET', meta, 'created_at', now, 'updated_at', now, 'metadata', metadata, 'next_id', next_id,
           'version', '0', 'forked_from', forked_from)
if text ~= '' then redis.call('SET', summary, text) end
if gaps ~= '' then redis.call('HSET', meta, 'gaps', gaps) end
if sessions then change_sets(session_id, entries, '', true, now, ttl) end
refresh(now)
record('fork')
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
        'count',
        'next_id',
        'metadata',
        'forked_from',
        'gaps',
        'text',
        'entries',
    ),
)


def _message_id(message: bytes) -> int:
    """The id of a stored message (`models.with_id` writes it first)."""
    return int(message[6 : message.index(b',')])


class RedisForks:
    """`RedisStore.fork_session`. `chunk_written` is a test hook, awaited after each chunk with the number written."""

    def __init__(self, store: 'RedisStore') -> None:
        self._store = store
        self._redis = store._redis
        self.chunk_written: Callable[[int], Awaitable[None]] | None = None

    async def fork(
        self, tenant: str, fork: Fork, idempotency: Idempotency | None, with_messages: bool
    ) -> StoredSession | None:
        store, redis = self._store, self._redis
        keys = store._keys(tenant)
        source, target = fork.source, fork.target
        state, taken = await _both_calls(
            redis.transaction(('HGET', keys.meta(source), 'created_at'), *_Layout.state(keys, source)),
            redis.transaction(
                ('HGET', keys.idempotency(target, idempotency.key if idempotency else '-'), 'fingerprint'),
                ('EXISTS', keys.meta(target)),
            ),
        )
        created_at, (recorded, exists) = state[0], taken
        if idempotency is not None and recorded is not None:
            if bytes(recorded).decode() != idempotency.fingerprint:
                raise IdempotencyKeyReused()
            return await self._replayed(tenant, target, with_messages)
        if created_at is None:
            return None
        start = _Layout.of(source, state[1:])
        first, next_id, gaps, held = start.first, start.next_id, start.gaps, start.held
        through = fork.through_id
        if through is None:
            through = ids.id_at(gaps, first, held - 1) if held else None
        elif not ids.holds(gaps, first, next_id, through):
            raise MessageNotFound(source, through)
        if exists:
            raise SessionExists(target)
        if store._index_beside:
            await store._check_room(keys, target)
        nonce = uuid.uuid4().hex
        copy = keys.fork_copy(target, nonce)
        try:
            check = _check(keys, source)
            if through is None:
                copied, checked = _Copied(with_messages), await redis.transaction(*check)
            else:
                copied, checked = await self._copy(keys, source, start, through, copy, check, _Copied(with_messages))
            fork_gaps = ids.format(tuple(gap for gap in gaps if through is not None and gap[0] < through))
            return await self._publish(
                tenant, keys, fork, through, bytes(created_at), copied, checked, fork_gaps, idempotency,
                with_messages, nonce,
            )  # fmt: skip
        except Exception:
            await redis.command('DEL', *copy)
            raise

    async def _copy(
        self,
        keys: 'RedisKeys',
        source: str,
        start: '_Layout',
        through: int,
        copy: tuple[str, str],
        check: 'tuple[Command, ...]',
        copied: '_Copied',
    ) -> 'tuple[_Copied, list[Any]]':
        """Copy the source's messages up to `through` into the hidden lists `copy`, chunk by chunk; the messages,
        and the replies to `check`, read once the last chunk was (sent with its write: no round trip of its own).
        `start` is the source when the fork began: each chunk must hold the ids expected from it, so a message not
        yet copied that went meanwhile (deleted, truncated, trimmed, cleared) fails the fork."""
        redis, first, gaps = self._redis, start.first, start.gaps
        total = ids.stored_below(gaps, first, start.next_id, through + 1)
        layout = start
        size, pending, asked = FIRST_CHUNK, None, 0
        while True:  # (through is stored: there is at least one chunk)
            want = min(size, total - asked)
            expected = (ids.id_at(gaps, first, asked), ids.id_at(gaps, first, asked + want - 1))
            commands = layout.reads(keys, source, expected[0], want) if want > 0 else check
            reply, _ = await _both_calls(redis.transaction(*commands), pending)
            if pending is not None and self.chunk_written is not None:
                await self.chunk_written(copied.count)
            pending = None
            if want == 0:
                return copied, reply
            now = _Layout.of(source, reply)
            if now.position(expected[0]) == layout.position(expected[0]) and now.offset == layout.offset:
                found = reply[-2:]  # the positions read were still those of the ids wanted
            else:  # messages before the chunk went (a delete, a trim): read it by id, in a script
                found = await self._by_id(keys, source, expected[0], want)
            layout = now
            messages, records = _chunk(source, found, expected, want)
            pending = redis.transaction(
                ('RPUSH', copy[0], *messages),
                ('RPUSH', copy[1], *records),
                ('EXPIRE', copy[0], FORK_HIDDEN_TTL_SECONDS),
                ('EXPIRE', copy[1], FORK_HIDDEN_TTL_SECONDS),
            )
            copied.add(messages)
            asked += want
            average = max(sum(map(len, messages)) // len(messages), 1)
            size = max(1, min(CHUNK_MESSAGES, CHUNK_BYTES // average))

    async def _by_id(self, keys: 'RedisKeys', source: str, first_id: int, want: int) -> list[Any]:
        """[messages, records]: the `want` messages from `first_id` on, found by id wherever they are now."""
        reply = await self._redis.script(
            lua.GET_COUNTED.bind(
                meta=keys.meta(source),
                msgs=keys.msgs(source),
                counts=keys.counts(source),
                limit=str(want),
                before='',
                after=str(first_id - 1),
            )
        )
        if not reply:
            raise ForkSourceChanged(source)
        return list(reply[1:])

    async def _publish(
        self,
        tenant: str,
        keys: 'RedisKeys',
        fork: Fork,
        through: int | None,
        created_at: bytes,
        copied: '_Copied',
        check: list[Any],
        gaps: str,
        idempotency: Idempotency | None,
        with_messages: bool,
        nonce: str,
    ) -> StoredSession:
        store, redis = self._store, self._redis
        source, target = fork.source, fork.target
        (now_created, now_next, metadata, now_gaps), now_held, summary = check
        if now_created is None or bytes(now_created) != created_at:
            raise ForkSourceChanged(source)  # deleted (and perhaps made again)
        if through is not None:
            current = ids.parse(now_gaps)
            if not ids.holds(current, int(now_next) - int(now_held) - ids.missing(current), int(now_next), through):
                raise ForkSourceChanged(source)  # cleared, truncated, or trimmed past through_id
        metadata = bytes(metadata) if fork.metadata is None else fork.metadata
        text = b'' if summary is None or through is None or summary_through(bytes(summary)) > through else summary
        origin = fork_origin(source, through)
        micros = to_micros(fork.now)
        copy_msgs, copy_counts = keys.fork_copy(target, nonce)
        call = FORK_PUBLISH.bind(
            meta=keys.meta(target),
            msgs=keys.msgs(target),
            counts=keys.counts(target),
            summary=keys.summary(target),
            idem=keys.idempotency(target, idempotency.key if idempotency else '-'),
            idems=keys.idems(target),
            copy_msgs=copy_msgs,
            copy_counts=copy_counts,
            sessions=None if store._index_beside else keys.sessions(),
            now=str(micros),
            ttl=store._ttl,
            cutoff=store._cutoff(micros),
            session_id=target,
            expected='',
            fingerprint=idempotency.fingerprint if idempotency else '',
            idem_ttl=idempotency.ttl_seconds if idempotency else 0,
            max_sessions=store._limits.max_sessions,
            count=copied.count,
            next_id=str(1 if through is None else through + 1),
            metadata=metadata,
            forked_from=origin,
            gaps=gaps,
            text=bytes(text),
            entries='' if store._index_beside else store._index.names_text(keys.index, metadata),
        )
        status = bytes((await redis.script(call))[0])
        if status == b'exists':
            raise SessionExists(target)
        if status == b'limit':
            raise SessionLimitReached(store._limits.max_sessions)
        if status == b'reused':
            raise IdempotencyKeyReused()
        if status == b'replay':
            return await self._replayed(tenant, target, with_messages)
        if status == b'lost':
            raise BackendUnavailable(f'the copy of {source!r} expired before it was published; retry')
        if store._index_beside:
            names = store._index.names(keys.index, metadata)
            await store._index.touch(keys.index, target, to_micros(fork.now), added=names)
        record = SessionRecord(target, fork.now, fork.now, metadata, 0, origin)
        return StoredSession(record, json_array(copied.messages) if with_messages else b'[]')

    async def _replayed(self, tenant: str, session_id: str, with_messages: bool) -> StoredSession:
        found = await self._store.get_session(tenant, session_id, with_messages=with_messages)
        if found is None:
            raise SessionNotFound(session_id)
        return found


class _Copied:
    """How many messages a fork copied, and the messages themselves only when its answer includes them: a list of
    100,000 messages freed at once held the event loop for 5-10 ms, where each chunk's go as it is written."""

    __slots__ = ('count', 'keep', 'messages')

    def __init__(self, keep: bool) -> None:
        self.keep, self.count = keep, 0
        self.messages: list[bytes] = []

    def add(self, messages: list[bytes]) -> None:
        self.count += len(messages)
        if self.keep:
            self.messages += messages


def _check(keys: 'RedisKeys', source: str) -> 'tuple[Command, ...]':
    """Step 3's read of the source (module docstring), once its messages are copied."""
    return (
        ('HMGET', keys.meta(source), 'created_at', 'next_id', 'metadata', 'gaps'),
        ('LLEN', keys.msgs(source)),
        ('GET', keys.summary(source)),
    )


def _chunk(source: str, found: list[Any], expected: tuple[int, int], want: int) -> tuple[list[bytes], list[Any]]:
    """The messages and records read for a chunk, which must hold `want` messages from id `expected[0]` to
    `expected[1]` (then they are exactly the ids expected: ids are never reused, so a source can only have lost
    some of them, and then the count or an end is off). The records of messages stored without one are 0."""
    messages, records = found  # lists of bytes, as Redis sends them
    if len(messages) != want or (_message_id(messages[0]), _message_id(messages[-1])) != expected:
        raise ForkSourceChanged(source)
    return messages, records if len(records) == want else [0] * (want - len(records)) + records


class _Layout:
    """Where a source's messages are in its lists, from one atomic read of its state: the first stored id, the next
    id and the gaps (`gaps`) place each id; `offset` is how many leading messages have no record (stored before
    records were: the records list is that much shorter)."""

    __slots__ = ('first', 'gaps', 'held', 'next_id', 'offset')

    def __init__(self, first: int, next_id: int, gaps: ids.Gaps, held: int, offset: int) -> None:
        self.first, self.next_id, self.gaps, self.held, self.offset = first, next_id, gaps, held, offset

    @staticmethod
    def state(keys: 'RedisKeys', source: str) -> 'tuple[Command, ...]':
        return (
            ('HMGET', keys.meta(source), 'next_id', 'gaps'),
            ('LLEN', keys.msgs(source)),
            ('LLEN', keys.counts(source)),
        )

    @classmethod
    def of(cls, source: str, replies: list[Any]) -> '_Layout':
        """From the replies to `state` (first in `replies`); ForkSourceChanged when the source is gone."""
        (next_id, text), held, records = replies[0], int(replies[1]), int(replies[2])
        if next_id is None:
            raise ForkSourceChanged(source)
        gaps, next_id = ids.parse(text), int(next_id)
        return cls(next_id - held - ids.missing(gaps), next_id, gaps, held, held - records)

    def position(self, message_id: int) -> int:
        """Where `message_id` is in the lists, if stored (else where the next stored id is)."""
        return ids.stored_below(self.gaps, self.first, self.next_id, message_id)

    def reads(self, keys: 'RedisKeys', source: str, first_id: int, want: int) -> 'tuple[Command, ...]':
        """The state, and the `want` messages from `first_id` on and their records, were this still the layout: as
        plain LRANGEs, which cost Redis a fraction of what a script's copy of the same messages costs. The state
        read with them says whether the positions held."""
        lo = self.position(first_id)
        hi = lo + want - 1
        record_lo, record_hi = max(lo - self.offset, 0), hi - self.offset
        return (
            *self.state(keys, source),
            ('LRANGE', keys.msgs(source), lo, hi),
            ('LRANGE', keys.counts(source), *((record_lo, record_hi) if record_hi >= 0 else (1, 0))),  # (1 0: none)
        )


async def _both_calls(first: 'Awaitable[Any] | None', second: 'Awaitable[Any] | None') -> tuple[Any, Any]:
    """Two calls at once (either may be None, answered None), in one round-trip time; if either fails, its error is
    raised after both end."""
    results = await asyncio.gather(first or _nothing(), second or _nothing(), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0], results[1]


async def _nothing() -> None:
    return None
