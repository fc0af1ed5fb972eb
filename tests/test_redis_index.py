"""The metadata index on Redis (`memsvc.stores.redis_index`): its keys, and the repair rule — an index entry whose
session is gone or no longer matches is never returned, a page is still full, and the entry is removed."""

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.crc import key_slot

from memsvc.models import SessionRecord, to_micros, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from memsvc.stores.redis import RedisStore
from memsvc.stores.redis_client import Client, create_client
from memsvc.stores.redis_reads import RedisKeys
from tests.conftest import make_settings
from tests.helpers import body

T = 'default'
U1, U2 = (('user_id', 'u1'),), (('user_id', 'u2'),)


def record(session_id: str, metadata: bytes, seconds: int = 0) -> SessionRecord:
    moment = utc_now() + timedelta(seconds=seconds)
    return SessionRecord(session_id, moment, moment, metadata, 0)


@pytest.fixture(params=['redis', 'redis_cluster'])
def settings(request: pytest.FixtureRequest) -> Settings:
    return make_settings(str(request.param), request)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[tuple[RedisStore, Client, RedisKeys]]:
    raw = create_client(settings)
    async with open_store(settings) as store:
        assert isinstance(store, RedisStore)
        yield store, raw, RedisKeys(settings.key_prefix, T)
    await raw.aclose()


async def ids(store: RedisStore, where: tuple[tuple[str, str], ...], limit: int = 100) -> tuple[list[str], bool]:
    page, more = await store.list_sessions(T, limit=limit, after=None, with_messages=False, where=where)
    return [session.record.id for session in page], more


async def test_the_index_keys_share_the_listing_s_slot(redis: tuple[RedisStore, Client, RedisKeys]) -> None:
    store, raw, keys = redis
    await store.create_session(T, record('s', b'{"user_id":"u1"}'))
    await store.create_session(T, record('odd', b'{"user_id":"two\\nlines"}'))
    index = keys.index
    by_u1 = index.values('user_id', 'u1')
    assert by_u1 == f'{{{keys.sessions()}}}:by:user_id:u1'
    assert await raw.hget(index.indexed, 's') == by_u1.encode()
    assert await raw.zrange(by_u1, 0, -1) == [b's']
    odd = index.values('user_id', 'two\nlines')
    assert odd == f'{{{keys.sessions()}}}:by:user_id:#' + hashlib.sha256(b'two\nlines').hexdigest()
    assert await raw.zrange(odd, 0, -1) == [b'odd']
    assert len({key_slot(key.encode()) for key in (keys.sessions(), index.indexed, by_u1, odd)}) == 1


async def test_an_entry_whose_session_is_gone_or_changed_is_never_listed(
    redis: tuple[RedisStore, Client, RedisKeys],
) -> None:
    """Each stop between a write's two steps on Cluster (the session's script, the index's), simulated by doing only
    the first: a PATCH (u1 -> u2) that stopped before leaving u1's set, one that stopped after joining u2's set but
    before its change, and a delete that stopped before the index's."""
    store, raw, keys = redis
    for n in range(6):
        await store.create_session(T, record(f's{n}', b'{"user_id":"u1"}', n))
    await raw.hset(keys.meta('s4'), 'metadata', '{"user_id":"u2"}')
    await raw.hset(keys.meta('s3'), 'metadata', '{}')
    await raw.delete(keys.meta('s5'))
    await store._index.touch(keys.index, 's2', to_micros(utc_now()), added=[keys.index.values('user_id', 'u2')])
    assert await ids(store, U1, limit=2) == (['s2', 's1'], True), 'the page is full, read past what it dropped'
    assert await ids(store, U1) == (['s2', 's1', 's0'], False)
    assert await ids(store, U2) == ([], False), "s2's extra entry and s4's missing one: neither lists"
    assert await raw.zrange(keys.index.values('user_id', 'u1'), 0, -1) == [b's0', b's1', b's2']
    assert await raw.zrange(keys.index.values('user_id', 'u2'), 0, -1) == []
    assert await raw.hget(keys.index.indexed, 's5') is None
    assert await raw.zscore(keys.sessions(), 's5') is None, 'a gone session leaves the listing too'
    await store.index_session(T, 's4')
    assert await ids(store, U2) == (['s4'], False), 'index_session (and so `memsvc reindex`) repairs the rest'


async def test_a_late_removal_of_a_patch_is_followed_by_the_entries_as_they_are(
    redis: tuple[RedisStore, Client, RedisKeys],
) -> None:
    """On Cluster a PATCH leaves the sets of its old value after its change, and another process's PATCH may have
    put the session back there meanwhile: the removal is followed by the entries of the metadata as stored."""
    store, _, keys = redis
    await store.create_session(T, record('s', b'{"user_id":"u1"}'))
    await store.update_metadata(T, 's', lambda _: b'{"user_id":"u2"}', utc_now())
    assert await ids(store, U2) == (['s'], False)
    updated = to_micros(utc_now())
    await store._index.metadata_set(keys.index, keys.meta('s'), 's', updated, [keys.index.values('user_id', 'u2')])
    assert await ids(store, U2) == (['s'], False)
    assert await ids(store, U1) == ([], False)


async def test_sessions_idle_past_the_ttl_leave_the_index_on_the_next_write(request: pytest.FixtureRequest) -> None:
    settings = make_settings('redis', request, session_ttl_seconds=100)
    keys = RedisKeys(settings.key_prefix, T)
    raw = create_client(settings)
    try:
        async with open_store(settings) as store:
            await store.create_session(T, record('idle', b'{"user_id":"u1"}', -300))
            await store.append_messages(T, 'busy', [body('x')], utc_now())
            assert await raw.zscore(keys.index.values('user_id', 'u1'), 'idle') is None
            assert await raw.hget(keys.index.indexed, 'idle') is None
            assert await raw.zscore(keys.sessions(), 'idle') is None
    finally:
        await raw.aclose()
