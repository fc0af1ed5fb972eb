"""Forks at the store: records copied, never visible half-made, and on Redis what an interrupted fork leaves."""

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from memsvc.errors import ForkSourceChanged, SessionExists
from memsvc.models import utc_now
from memsvc.settings import Settings
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores.base import FORK_HIDDEN_TTL_SECONDS, Fork
from memsvc.stores.redis_client import Client, create_client
from tests.conftest import STORE_KINDS, make_settings
from tests.helpers import body, ids

T = 'default'
REDIS_KINDS = ['redis', 'redis_cluster']


def fork_of(source: str, target: str, through_id: int | None = None) -> Fork:
    return Fork(source, target, through_id, None, utc_now())


async def fill(store: Store, session_id: str, count: int, batch: int = 1000) -> None:
    for start in range(0, count, batch):
        texts = [f'message {n}' for n in range(start, min(start + batch, count))]
        await store.append_messages(T, session_id, [body(t) for t in texts], utc_now(), records=[7] * len(texts))


async def test_a_fork_keeps_each_messages_token_record(store: Store) -> None:
    await store.append_messages(T, 'src', [body('a'), body('b'), body('c')], utc_now(), records=[41, 42, 43])
    await store.append_messages(T, 'src', [body('d')], utc_now())  # stored without a record
    assert await store.fork_session(T, fork_of('src', 'f', 4)) is not None
    page = await store.get_counted_messages(T, 'f', MessageRange())
    assert page is not None
    assert [record for _, record in page.messages] == [41, 42, 43, 0]
    source = await store.get_counted_messages(T, 'src', MessageRange())
    assert source is not None
    assert page.messages == source.messages


def hook_of(store: Store) -> Any:
    """The store's per-chunk test hook holder, where it has one (Redis, Chroma)."""
    return getattr(store, 'forks', None)


def size_for(kind: str) -> int:
    return 1_100 if kind.startswith('chroma') else 20_000  # Chroma embeds every message: kept small (3 steps)


async def test_a_large_fork_is_never_visible_half_made(store: Store, store_kind: str) -> None:
    count = size_for(store_kind)
    await fill(store, 'src', count)
    seen: list[str] = []  # at each chunk written

    async def visible() -> str:
        """'absent' or 'whole' for each read on its own (the fork may be published between two of them)."""
        found = await store.get_session(T, 'big', with_messages=True)
        messages = await store.get_messages(T, 'big', MessageRange(limit=2))
        listed, _ = await store.list_sessions(T, limit=10, after=None, with_messages=False)
        states = {
            'absent' if found is None else 'whole' if len(orjson.loads(found.messages)) == count else 'half',
            'absent' if messages is None else 'whole' if ids(messages) == [count - 1, count] else 'half',
            'whole' if 'big' in [s.record.id for s in listed] else 'absent',
        }
        assert 'half' not in states, 'a half-copied session was visible'
        return 'absent' if states == {'absent'} else 'whole'

    async def at_chunk(copied: int) -> None:
        seen.append(await visible())

    forks = hook_of(store)
    if forks is not None:
        forks.chunk_written = at_chunk
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            await visible()  # from another task, at any moment: never half-made
            await asyncio.sleep(0)

    poller = asyncio.ensure_future(poll())
    try:
        forked = await store.fork_session(T, fork_of('src', 'big'), with_messages=False)
    finally:
        done.set()
        await poller
    assert forked is not None
    assert await visible() == 'whole'
    assert set(seen) <= {'absent'}, seen
    if forks is not None:
        assert len(seen) >= 2, 'the copy took several steps'
    page = await store.get_messages(T, 'big', MessageRange(limit=2))
    assert ids(page) == [count - 1, count]


# --- Redis: what an interrupted fork leaves, and the races with the target and the source -----------------------------


async def hidden_keys(settings: Settings) -> list[bytes]:
    """The hidden copies of forks (on a Cluster, of every primary), seen by a client of its own."""
    raw: Client = create_client(settings)
    pattern = f'{settings.key_prefix}:*:fork:*'
    try:
        if isinstance(raw, RedisCluster):
            found = [key async for key in raw.scan_iter(match=pattern, target_nodes=RedisCluster.PRIMARIES)]
        else:
            found = await raw.keys(pattern)
        keys = sorted(key if isinstance(key, bytes) else key.encode() for key in found)
        return [key for key in keys if 0 < await raw.ttl(key) <= FORK_HIDDEN_TTL_SECONDS] + [
            b'(no TTL) ' + key for key in keys if not 0 < await raw.ttl(key) <= FORK_HIDDEN_TTL_SECONDS
        ]
    finally:
        await raw.aclose()


class Crash(BaseException):
    """Stops a fork where it is, as a crash of the process would: no cleanup runs (only `Exception`s clean up)."""


@pytest.mark.parametrize('store_kind', REDIS_KINDS)
async def test_an_interrupted_fork_leaves_nothing_visible_and_its_leftovers_expire(
    store: Store, settings: Settings
) -> None:
    await fill(store, 'src', 5_000)

    async def crash(copied: int) -> None:
        if copied >= 1_000:
            raise Crash()

    hook_of(store).chunk_written = crash
    with pytest.raises(Crash):
        await store.fork_session(T, fork_of('src', 'gone'))
    assert await store.get_session(T, 'gone', with_messages=False) is None
    listed, _ = await store.list_sessions(T, limit=10, after=None, with_messages=False)
    assert [s.record.id for s in listed] == ['src']
    leftovers = await hidden_keys(settings)
    assert len(leftovers) == 2, leftovers
    assert all(not key.startswith(b'(no TTL)') for key in leftovers), leftovers
    hook_of(store).chunk_written = None
    again = await store.fork_session(T, fork_of('src', 'gone'), with_messages=False)
    assert again is not None, "the leftovers are in nobody's way"


@pytest.mark.parametrize('store_kind', ['in_memory', *REDIS_KINDS])
async def test_an_append_to_the_new_id_during_the_copy_wins_and_the_fork_is_409(
    store: Store, store_kind: str, settings: Settings
) -> None:
    """(On Chroma the append waits for the fork, which holds the id's lock: it cannot come in between.)"""
    await fill(store, 'src', 20_000)

    async def append_to_target(copied: int) -> None:
        if not await store.get_session(T, 'target', with_messages=False):
            await store.append_messages(T, 'target', [body('mine')], utc_now())

    hook_of(store).chunk_written = append_to_target
    with pytest.raises(SessionExists):
        await store.fork_session(T, fork_of('src', 'target'))
    found = await store.get_session(T, 'target', with_messages=True)
    assert found is not None
    assert not found.record.forked_from
    assert [m['content'] for m in orjson.loads(found.messages)] == ['mine']
    if store_kind in REDIS_KINDS:
        assert await hidden_keys(settings) == []


# Trimming needs a second store with a limit on the same data, which in_memory cannot have: its stores share nothing.
_CHANGES = [
    *((kind, change) for kind in STORE_KINDS for change in ('clear', 'delete')),
    *((kind, 'trim') for kind in STORE_KINDS if kind != 'in_memory'),
]


@pytest.mark.parametrize(('store_kind', 'change'), _CHANGES)
async def test_a_source_cleared_deleted_or_trimmed_during_the_copy_fails_the_fork(
    store: Store, store_kind: str, settings: Settings, request: pytest.FixtureRequest, change: str
) -> None:
    count = size_for(store_kind)
    await fill(store, 'src', count)

    async def change_source(copied: int) -> None:
        if change == 'clear':
            await store.clear_messages(T, 'src', utc_now())
        elif change == 'delete':
            await store.delete_session(T, 'src')
        if change != 'trim':
            await fill(store, 'src', 10)  # and written again: a different history (after a delete, the same ids)

    hook_of(store).chunk_written = change_source
    through = count // 2
    if change == 'trim':  # another replica keeps 10 messages: its next append trims past what the fork still needs
        limited = make_settings(store_kind, request, max_messages_per_session=10)
        async with open_store(limited) as trimming:

            async def change_source(copied: int) -> None:
                await trimming.append_messages(T, 'src', [body('new')], utc_now())

            hook_of(store).chunk_written = change_source
            with pytest.raises(ForkSourceChanged):
                await store.fork_session(T, fork_of('src', 'target', through))
    else:
        with pytest.raises(ForkSourceChanged):
            await store.fork_session(T, fork_of('src', 'target', through))
    assert await store.get_session(T, 'target', with_messages=False) is None
    if store_kind in REDIS_KINDS:
        assert await hidden_keys(settings) == []


@pytest.mark.parametrize('store_kind', REDIS_KINDS)
async def test_appends_to_the_source_during_the_copy_do_not_matter(store: Store) -> None:
    await fill(store, 'src', 5_000)

    async def append_to_source(copied: int) -> None:
        await store.append_messages(T, 'src', [body('later')], utc_now())

    hook_of(store).chunk_written = append_to_source
    forked = await store.fork_session(T, fork_of('src', 'target', 5_000))
    assert forked is not None
    assert ids(forked.messages) == list(range(1, 5_001))


@pytest.mark.parametrize('store_kind', REDIS_KINDS)
async def test_messages_deleted_behind_the_copy_move_the_rest_and_the_copy_finds_them(store: Store) -> None:
    """A chunk is read by position; a delete of a message already copied moves those still to copy (and the first
    has no record, so the records move otherwise): the copy reads them where they are, each with its record."""
    await store.append_messages(T, 'src', [body('no record 1'), body('no record 2')], utc_now())
    for start in range(3, 3_003, 1_000):
        numbers = range(start, start + 1_000)
        await store.append_messages(T, 'src', [body(f'm{n}') for n in numbers], utc_now(), records=list(numbers))
    deleted: list[int] = []

    async def delete_behind(copied: int) -> None:
        if not deleted:
            deleted.extend((1, 100))  # both in the first chunk, already copied
            for message_id in deleted:
                assert await store.delete_message(T, 'src', message_id, utc_now()) is not None

    hook_of(store).chunk_written = delete_behind
    assert await store.fork_session(T, fork_of('src', 'f'), with_messages=False) is not None
    forked = await store.get_counted_messages(T, 'f', MessageRange())
    source = await store.get_counted_messages(T, 'src', MessageRange())
    assert forked is not None
    assert source is not None
    assert deleted == [1, 100]
    assert [record for _, record in forked.messages] == [0, 0, *range(3, 3_003)]
    assert ids([raw for raw, _ in forked.messages]) == list(range(1, 3_003)), 'the fork is the copy as it was read'
    assert [m for m in forked.messages if orjson.loads(m[0])['id'] not in deleted] == source.messages
