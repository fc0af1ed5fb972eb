"""The metadata index every store keeps (`stores.index`): filtered listings follow create, PATCH, fork and delete,
newest first and in pages; `index_session` rewrites entries under another MEMSVC_INDEXED_METADATA. Once per store."""

from datetime import timedelta

import orjson
import pytest

from memsvc.models import SessionRecord, to_micros, utc_now
from memsvc.settings import Settings
from memsvc.stores import Store, open_store
from memsvc.stores.base import Fork, Idempotency, MessageRange
from memsvc.stores.index import Where
from tests.conftest import make_settings
from tests.helpers import body

T = 'default'
START = utc_now()


def record(session_id: str, seconds: int, **metadata: object) -> SessionRecord:
    moment = START + timedelta(seconds=seconds)
    return SessionRecord(session_id, moment, moment, orjson.dumps(metadata), 0)


@pytest.fixture
def settings(store_kind: str, request: pytest.FixtureRequest) -> Settings:
    return make_settings(store_kind, request, indexed_metadata='user_id,org')


async def listed(store: Store, where: Where, *, limit: int = 100, tenant: str = T) -> list[str]:
    """Every page of the filtered listing, `limit` at a time, as ids."""
    found: list[str] = []
    after = None
    while True:
        page, more = await store.list_sessions(tenant, limit=limit, after=after, with_messages=False, where=where)
        found += [session.record.id for session in page]
        if not more:
            return found
        after = (to_micros(page[-1].record.updated_at), page[-1].record.id)


async def test_the_index_follows_every_write(store: Store) -> None:
    u1, u2 = (('user_id', 'u1'),), (('user_id', 'u2'),)
    for n, user in enumerate(['u1', 'u2', 'u1', 'u1', 'u1']):
        await store.create_session(T, record(f's{n}', n, user_id=user, org='o' if n % 2 else 'p'))
    await store.create_session(T, record('number', 5, user_id=1))  # not a string: not indexed
    await store.create_session('other', record('theirs', 6, user_id='u1'))
    assert await listed(store, u1, limit=2) == ['s4', 's3', 's2', 's0'], 'newest first, in pages'
    assert await listed(store, (('user_id', 'u1'), ('org', 'o'))) == ['s3'], 'several filters: all of them'
    assert await listed(store, (('user_id', '1'),)) == []
    assert await listed(store, u1, tenant='other') == ['theirs']

    await store.append_messages(T, 's0', [body('hi')], START + timedelta(seconds=10))
    assert await listed(store, u1) == ['s0', 's4', 's3', 's2'], 'an append moves the session in its filters too'
    page, _ = await store.list_sessions(T, limit=1, after=None, with_messages=True, where=u1)
    assert orjson.loads(page[0].messages)[0]['content'] == 'hi'

    await store.update_metadata(T, 's4', lambda _: b'{"user_id":"u2"}', START + timedelta(seconds=11))
    await store.update_metadata(T, 's2', lambda _: b'{"user_id":{"nested":"u1"}}', START + timedelta(seconds=12))
    assert await listed(store, u1) == ['s0', 's3']
    assert await listed(store, u2) == ['s4', 's1']

    fork = Fork('s0', 'copy', None, None, START + timedelta(seconds=13))
    await store.fork_session(T, fork)
    await store.fork_session(T, Fork('s3', 'moved', None, b'{"user_id":"u2"}', START + timedelta(seconds=14)))
    assert await listed(store, u1) == ['copy', 's0', 's3']
    assert await listed(store, u2) == ['moved', 's4', 's1']

    await store.delete_session(T, 's0')
    await store.delete_session(T, 'moved')
    assert await listed(store, u1) == ['copy', 's3']
    assert await listed(store, u2) == ['s4', 's1']
    assert await listed(store, ()) == ['copy', 's2', 's4', 'number', 's3', 's1'], 'the listing is unchanged'


@pytest.mark.parametrize('store_kind', ['redis', 'redis_cluster', 'chroma'])
async def test_index_session_writes_the_entries_of_the_keys_configured_now(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    """What `memsvc reindex` does for each session after MEMSVC_INDEXED_METADATA changed."""
    before = make_settings(store_kind, request, indexed_metadata='user_id')
    async with open_store(before) as store:
        await store.create_session(T, record('a', 1, user_id='u', org='o'))
        await store.create_session(T, record('b', 2, org='o'))
    after: Settings = before.model_copy(update={'indexed_metadata': 'org'})
    async with open_store(after) as store:
        assert await listed(store, (('org', 'o'),)) == [], 'written under the old setting'
        assert await store.index_session(T, 'a')
        assert await listed(store, (('org', 'o'),)) == ['a']
        assert not await store.index_session(T, 'missing')
        reindex = getattr(store, 'reindex')  # noqa: B009 (not part of the Store protocol: the CLI's)
        assert sum([done async for done in reindex(T)]) == 2
        assert await listed(store, (('org', 'o'),)) == ['b', 'a']
        assert await listed(store, (('user_id', 'u'),)) == [], "the old key's entries are gone"


async def test_erase_session_takes_the_idempotency_records_a_delete_keeps(store: Store) -> None:
    """What an erasure (`memsvc.erasure`) does to each session; also to one already deleted, whose records stay."""
    create = Idempotency(key='c' * 64, fingerprint='f' * 64, ttl_seconds=600)
    append = Idempotency(key='a' * 64, fingerprint='f' * 64, ttl_seconds=600)
    for session_id in ('erased', 'deleted'):
        assert await store.create_session(T, record(session_id, 1, user_id='u'), idempotency=create) is not None
        await store.append_messages(T, session_id, [body('secret')], START, idempotency=append)
    assert await store.erase_session(T, 'erased')
    assert await store.get_session(T, 'erased', with_messages=False) is None
    assert await store.delete_session(T, 'deleted')
    assert not await store.erase_session(T, 'deleted'), 'gone already: False, and its records go now'
    assert not await store.erase_session(T, 'never')
    for session_id in ('erased', 'deleted'):  # the same writes again are new ones, not replays
        assert await store.create_session(T, record(session_id, 2, user_id='u'), idempotency=create) is not None
        assert await store.get_session(T, session_id, with_messages=False) is not None
        await store.append_messages(T, session_id, [body('again')], START, idempotency=append)
        messages = await store.get_messages(T, session_id, MessageRange())
        assert messages is not None
        assert [m['content'] for m in orjson.loads(messages)] == ['again']
    assert sorted(await listed(store, (('user_id', 'u'),))) == ['deleted', 'erased']
