"""What only the Redis store promises: its key layout, TTLs on every key, the message cap, bounded
connections and failures that are 503, never "not found". Runs against the suite's own servers."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from redis.crc import key_slot

import memsvc.stores.redis as redis_store
from memsvc.errors import BackendUnavailable, NotSupported
from memsvc.models import SessionRecord, to_micros, utc_now
from memsvc.settings import Settings
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores import redis_scripts as lua
from memsvc.stores.base import Idempotency
from memsvc.stores.redis_client import Client, create_client, masked_url
from memsvc.stores.redis_reads import RedisKeys
from tests.conftest import make_settings
from tests.helpers import body, ids, parsed
from tests.servers import free_port

T = 'default'
REDIS_KINDS = ['redis', 'redis_cluster']


@pytest.fixture
async def raw(settings: Settings) -> AsyncIterator[Client]:
    """A plain client on the same Redis (or Cluster) as the store under test, to look at the keys."""
    client = create_client(settings)
    yield client
    await client.aclose()


@pytest.fixture(params=REDIS_KINDS)
def redis_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def documented_layout() -> list[tuple[str, str, list[str]]]:
    """(key template, type, hash fields named) for each line of the layout in the module docstring."""
    assert redis_store.__doc__ is not None
    found = re.findall(r'^ +(\{p\}:\S+) +(HASH|LIST|ZSET|STRING|SET) +(.*)$', redis_store.__doc__, flags=re.MULTILINE)
    return [
        (template, kind, [re.sub(r'\(.*?\)', '', part).strip() for part in rest.split(',')])
        for template, kind, rest in found
    ]


@pytest.mark.parametrize('store_kind', ['redis'])
async def test_key_layout_is_the_documented_one(store: Store, raw: Client, settings: Settings) -> None:
    layout = documented_layout()
    assert [kind for _, kind, _ in layout] == ['HASH', 'LIST', 'LIST', 'STRING', 'HASH', 'SET', 'ZSET']
    created = utc_now()
    await store.create_session(
        T, SessionRecord(id='s1', created_at=created, updated_at=created, metadata=b'{"k":"v"}', version=0)
    )
    idempotency = Idempotency(key='a1' * 32, fingerprint='f0' * 32, ttl_seconds=600)
    appended = await store.append_messages(
        T, 's1', [body('a'), body('b')], created + timedelta(seconds=1), idempotency=idempotency, records=[24, 5]
    )
    stored = appended.messages
    summary = b'{"content":"s","through_id":2,"updated_at":"2026-01-01T00:00:00Z"}'
    await store.set_summary(T, 's1', summary, 2, created + timedelta(seconds=1))

    def key(template: str) -> str:
        return (
            template.replace('{p}', settings.key_prefix)
            .replace('<tenant>', T)
            .replace('<id>', 's1')
            .replace('<key>', idempotency.key)
        )

    meta, msgs, counts, summary_key, idem, idems, index = all_keys = [key(template) for template, _, _ in layout]
    assert sorted(await raw.keys(f'{settings.key_prefix}:*')) == sorted(k.encode() for k in all_keys)
    for template, kind, _ in layout:
        assert await raw.type(key(template)) == kind.lower().encode(), template
    keys = RedisKeys(settings.key_prefix, T)
    assert [
        keys.meta('s1'),
        keys.msgs('s1'),
        keys.counts('s1'),
        keys.summary('s1'),
        keys.idempotency('s1', idempotency.key),
        keys.idems('s1'),
        keys.sessions(),
    ] == all_keys
    assert await raw.smembers(idems) == {idem.encode()}
    assert 0 < await raw.ttl(idems) <= 600, 'as long as its record'
    assert await raw.lrange(counts, 0, -1) == [b'24', b'5']
    assert await raw.get(summary_key) == summary

    def hash_fields(found: dict[Any, Any]) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in found.items()}

    fields = hash_fields(await raw.hgetall(meta))
    assert sorted(fields) == sorted(layout[0][2])
    assert fields['metadata'] == b'{"k":"v"}'
    assert int(fields['created_at']) == to_micros(created)
    assert int(fields['updated_at']) == to_micros(created + timedelta(seconds=1))
    assert int(fields['next_id']) == 3
    assert await raw.lrange(msgs, 0, -1) == stored, 'the list holds exactly the bytes the store returned'
    await store.append_messages(T, 's1', [body('c'), body('d')], utc_now())
    await store.delete_message(T, 's1', 3, utc_now())
    assert await raw.hget(meta, 'gaps') == b'3:4', 'a session with gaps has them in its meta'
    await store.truncate_messages(T, 's1', 2, utc_now())
    assert await raw.hget(meta, 'gaps') == b'3:5'
    await store.clear_messages(T, 's1', utc_now())
    assert await raw.hget(meta, 'gaps') is None
    record = hash_fields(await raw.hgetall(idem))
    assert sorted(record) == sorted(layout[4][2])
    assert record['fingerprint'] == idempotency.fingerprint.encode()
    assert 0 < await raw.pttl(idem) <= 600_000, 'the record lives for the Idempotency-Key TTL'
    assert await raw.zrange(index, 0, -1, withscores=True) == [
        (b's1', float(to_micros(created + timedelta(seconds=1))))
    ]
    assert len({key_slot(k.encode()) for k in (meta, msgs, counts, summary_key, idem)}) == 1, (
        'one hash tag: one Cluster slot per session'
    )


async def test_sessions_spread_over_the_cluster_and_list_across_slots(request: pytest.FixtureRequest) -> None:
    settings = make_settings('redis_cluster', request)
    async with open_store(settings) as store:
        for n in range(30):
            await store.append_messages(T, f's{n:02}', [body('x')], utc_now() + timedelta(milliseconds=n))
        keys = RedisKeys(settings.key_prefix, T)
        slots = {key_slot(keys.meta(f's{n:02}').encode()) for n in range(30)}
        assert len(slots) > 1
        seen: list[str] = []
        after = None
        while True:
            page, more = await store.list_sessions(T, limit=7, after=after, with_messages=True)
            seen += [s.record.id for s in page]
            assert all(len(parsed(s.messages)) == 1 for s in page)
            if not more:
                break
            after = (to_micros(page[-1].record.updated_at), page[-1].record.id)
        assert seen == [f's{n:02}' for n in reversed(range(30))]


async def test_ttl_is_set_on_every_key_and_slides_on_every_write(
    redis_kind: str, request: pytest.FixtureRequest
) -> None:
    settings = make_settings(redis_kind, request, session_ttl_seconds=100)
    keys = RedisKeys(settings.key_prefix, T)
    meta, msgs, counts, summary = keys.meta('s'), keys.msgs('s'), keys.counts('s'), keys.summary('s')
    raw = create_client(settings)
    try:
        async with open_store(settings) as store:

            async def age() -> None:
                """Pretend 95 of the 100 seconds passed: only what the next write does can lift the TTL again."""
                for key in (meta, msgs, counts, summary):
                    await raw.pexpire(key, 5000)

            async def assert_refreshed(*keys_: str) -> None:
                for key in keys_:
                    assert 5000 < await raw.pttl(key) <= 100_000, key

            now = utc_now()
            await store.create_session(
                T, SessionRecord(id='s', created_at=now, updated_at=now, metadata=b'{}', version=0)
            )
            await assert_refreshed(meta)
            await store.append_messages(T, 's', [body('a')], utc_now())
            await assert_refreshed(meta, msgs, counts)
            await age()
            await store.set_summary(T, 's', b'{}', 1, utc_now())
            await assert_refreshed(meta, msgs, counts, summary)
            await age()
            await store.update_metadata(T, 's', lambda m: b'{"x":1}', utc_now())
            await assert_refreshed(meta, msgs, counts, summary)
            await age()
            await store.append_messages(T, 's', [body('b')], utc_now())
            await assert_refreshed(meta, msgs, counts, summary)
            await age()
            await store.delete_summary(T, 's', utc_now())
            await assert_refreshed(meta, msgs, counts)
            await age()
            await store.clear_messages(T, 's', utc_now())
            await assert_refreshed(meta)
            await store.append_messages(T, 's', [body('c')], utc_now())
            await assert_refreshed(meta, msgs)
            assert await raw.pttl(keys.sessions()) > 100_000, 'the index outlives every session in it'
            await age()
            await store.get_messages(T, 's', MessageRange())
            await store.get_session(T, 's', with_messages=True)
            assert await raw.pttl(meta) <= 5000, 'reads do not refresh the TTL'
        async with open_store(settings.model_copy(update={'session_ttl_seconds': 0})) as store:
            await store.append_messages(T, 's', [body('d')], utc_now())
            await store.set_summary(T, 's', b'{}', 4, utc_now())
            for key in (meta, msgs, counts, summary, keys.sessions()):
                assert await raw.pttl(key) == -1, f'{key}: TTL 0 means no expiry'
    finally:
        await raw.aclose()


async def test_idle_session_expires_and_leaves_the_listing(redis_kind: str, request: pytest.FixtureRequest) -> None:
    settings = make_settings(redis_kind, request, session_ttl_seconds=1)
    raw = create_client(settings)
    keys = RedisKeys(settings.key_prefix, T)
    try:
        async with (
            open_store(settings) as expiring,
            open_store(settings.model_copy(update={'session_ttl_seconds': 0})) as lasting,
        ):
            await lasting.append_messages(T, 'kept', [body('a')], utc_now())
            await expiring.append_messages(T, 'gone', [body('a'), body('b')], utc_now() + timedelta(milliseconds=1))
            page, _ = await expiring.list_sessions(T, limit=10, after=None, with_messages=False)
            assert [s.record.id for s in page] == ['gone', 'kept']

            deadline = time.monotonic() + 10
            while await expiring.get_session(T, 'gone', with_messages=False) is not None:
                assert time.monotonic() < deadline, 'the session did not expire'
                await asyncio.sleep(0.05)

            assert await expiring.get_messages(T, 'gone', MessageRange()) is None
            assert await raw.exists(keys.meta('gone'), keys.msgs('gone')) == 0
            page, more = await expiring.list_sessions(T, limit=10, after=None, with_messages=True)
            assert [s.record.id for s in page] == ['kept']
            assert not more
            assert await raw.zscore(keys.sessions(), 'gone') is None, 'the listing removed the dead entry'
            assert ids((await expiring.append_messages(T, 'gone', [body('new')], utc_now())).messages) == [1]
    finally:
        await raw.aclose()


async def test_listing_skips_entries_whose_session_is_gone_and_still_fills_the_page(
    redis_kind: str, request: pytest.FixtureRequest
) -> None:
    settings = make_settings(redis_kind, request)
    raw = create_client(settings)
    keys = RedisKeys(settings.key_prefix, T)
    try:
        async with open_store(settings) as store:
            base = utc_now()
            for n in range(10):
                await store.append_messages(T, f's{n}', [body('x')], base + timedelta(seconds=n))
            for n in (9, 8, 6, 5, 4):  # as if they had expired: the keys vanish, the index entries stay
                await raw.delete(keys.meta(f's{n}'), keys.msgs(f's{n}'))
            page, more = await store.list_sessions(T, limit=3, after=None, with_messages=False)
            assert [s.record.id for s in page] == ['s7', 's3', 's2']
            assert more
            rest, more = await store.list_sessions(
                T, limit=3, after=(to_micros(page[-1].record.updated_at), 's2'), with_messages=False
            )
            assert [s.record.id for s in rest] == ['s1', 's0']
            assert not more
            assert await raw.zcard(keys.sessions()) == 5
    finally:
        await raw.aclose()


@pytest.mark.parametrize('kind', ['in_memory', *REDIS_KINDS])
async def test_max_messages_keeps_the_newest_and_ids_stay_stable(kind: str, request: pytest.FixtureRequest) -> None:
    async with open_store(make_settings(kind, request, max_messages_per_session=5)) as store:
        for batch in ([1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]):
            stored = (await store.append_messages(T, 's', [body(f'm{n}') for n in batch], utc_now())).messages
            assert ids(stored) == batch, 'the append returns every message it took, even those trimmed at once'
        assert ids(await store.get_messages(T, 's', MessageRange())) == [8, 9, 10, 11, 12]
        assert ids(await store.get_messages(T, 's', MessageRange(limit=2))) == [11, 12]
        assert ids(await store.get_messages(T, 's', MessageRange(after=2, limit=2))) == [8, 9]
        assert ids(await store.get_messages(T, 's', MessageRange(before=10))) == [8, 9]
        assert await store.get_messages(T, 's', MessageRange(before=8)) == b'[]'
        big = (await store.append_messages(T, 's', [body(f'b{n}') for n in range(7)], utc_now())).messages
        assert ids(big) == list(range(13, 20))
        assert ids(await store.get_messages(T, 's', MessageRange())) == [15, 16, 17, 18, 19]
        assert await store.clear_messages(T, 's', utc_now())
        assert ids((await store.append_messages(T, 's', [body('after clear')], utc_now())).messages) == [20]
        found = await store.get_session(T, 's', with_messages=True)
        assert found is not None
        assert ids(found.messages) == [20]


async def test_a_small_pool_makes_requests_wait_instead_of_failing(request: pytest.FixtureRequest) -> None:
    settings = make_settings('redis', request, redis_max_connections=2, redis_pool_timeout=5)
    async with open_store(settings) as store:
        results = await asyncio.gather(
            *(store.append_messages(T, f's{n % 5}', [body(str(n))], utc_now()) for n in range(200))
        )
        assert len(results) == 200
        page, _ = await store.list_sessions(T, limit=10, after=None, with_messages=True)
        assert sum(len(parsed(s.messages)) for s in page) == 200


@pytest.mark.parametrize('store_kind', REDIS_KINDS)
async def test_search_names_the_chroma_backend(store: Store) -> None:
    with pytest.raises(NotSupported, match='MEMORY_TYPE=chroma'):
        await store.search(T, 'hello', limit=5, session_id=None, role=None)


@pytest.mark.parametrize(
    'url',
    ['redis://:s3cret@127.0.0.1:{port}/0', 'redis+cluster://user:s3cret@127.0.0.1:{port}', 'redis://127.0.0.1:{port}'],
)
async def test_unreachable_at_start_is_one_error_naming_the_url_without_its_password(url: str) -> None:
    url = url.format(port=free_port())
    settings = Settings(memory_type='redis', redis_url=url)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        async with open_store(settings):
            pass
    assert time.monotonic() - started < 5
    message = caught.value.message
    assert masked_url(url) in message
    assert 's3cret' not in message
    assert '\n' not in message


def test_masked_url() -> None:
    assert masked_url('redis://:pw@host:1/0') == 'redis://:***@host:1/0'
    assert masked_url('rediss://me:pw@host/0') == 'rediss://me:***@host/0'
    assert masked_url('redis://host:1/0') == 'redis://host:1/0'


async def test_a_malformed_url_stops_the_start_with_a_message() -> None:
    with pytest.raises(BackendUnavailable, match='REDIS_URL'):
        async with open_store(Settings(memory_type='redis', redis_url='http://:pw@example/0')):
            pass


async def test_writes_and_reads_load_their_scripts_again_after_redis_forgot_them(
    redis_kind: str, request: pytest.FixtureRequest
) -> None:
    """A restarted (or failed-over) Redis has no scripts loaded: the first call of each loads it again."""
    settings = make_settings(redis_kind, request)
    raw = create_client(settings)
    try:
        async with open_store(settings) as store:
            await store.append_messages(T, 's', [body('a'), body('b')], utc_now())
            await raw.script_flush()
            assert not any(await raw.script_exists(lua.APPEND.sha)), 'every node forgot the scripts'
            stored = await asyncio.gather(
                *(store.append_messages(T, 's', [body(f'c{n}')], utc_now()) for n in range(5))
            )
            assert sorted(ids(appended.messages)[0] for appended in stored) == [3, 4, 5, 6, 7]
            await raw.script_flush()
            assert ids(await store.get_messages(T, 's', MessageRange(after=1, limit=2))) == [2, 3]
            assert await store.clear_messages(T, 's', utc_now())
    finally:
        await raw.aclose()
