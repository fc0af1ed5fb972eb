"""Erasure (SPEC-2 §3, issue 16 item 2): `DELETE /sessions?metadata.<key>=<value>` on every store, in several steps
(MEMSVC_ERASE_BATCH=2 here), what goes with each session, what stays, and a repeat after a stop. Tenants:
`test_tenants.py`."""

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.cluster import RedisCluster

from memsvc import erasure
from memsvc.errors import BackendUnavailable
from memsvc.models import SessionRecord, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from tests.conformance import CheckedClient
from tests.conftest import make_settings
from tests.events_client import Event, events
from tests.helpers import API
from tests.servers import RedisServer

BATCH = 2


@pytest.fixture
def settings(store_kind: str, request: pytest.FixtureRequest) -> Settings:
    return make_settings(store_kind, request, indexed_metadata='user_id,org', erase_batch=BATCH)


def turn(content: str) -> dict[str, str]:
    return {'role': 'user', 'content': content}


async def test_an_erasure_takes_every_matching_session_with_all_it_holds(
    client: CheckedClient, store_kind: str
) -> None:
    mine = [f'u1-{n}' for n in range(3 * BATCH + 1)]  # more than three steps
    for n, session_id in enumerate(mine):
        metadata = {'user_id': 'u1', 'org': 'acme' if n % 2 else 'other'}
        assert (await client.post(f'{API}/sessions', json={'id': session_id, 'metadata': metadata})).status == 201
        reply = await client.post(f'{API}/sessions/{session_id}/messages', json=turn(f'secret {n}'))
        assert reply.status == 201
    summary = {'content': 'a summary of secrets', 'through_id': 1}
    assert (await client.put(f'{API}/sessions/{mine[0]}/summary', json=summary)).status == 200
    created = await client.post(
        f'{API}/sessions', json={'metadata': {'user_id': 'u1'}}, headers={'Idempotency-Key': 'create-once'}
    )
    keyed = created.json()['id']
    append = await client.post(
        f'{API}/sessions/{keyed}/messages', json=turn('kept once'), headers={'Idempotency-Key': 'a-1'}
    )
    assert append.status == 201
    mine.append(keyed)
    for other in ('u2-a', 'u2-b'):
        await client.post(f'{API}/sessions', json={'id': other, 'metadata': {'user_id': 'u2', 'org': 'acme'}})
        await client.post(f'{API}/sessions/{other}/messages', json=turn('not a secret'))

    reply = await client.delete(f'{API}/sessions?metadata.user_id=u1&metadata.org=acme')
    assert (reply.status, reply.json()) == (200, {'deleted': BATCH + 1}), 'several filters: all of them'
    reply = await client.delete(f'{API}/sessions?metadata.user_id=u1')
    assert (reply.status, reply.json()) == (200, {'deleted': len(mine) - BATCH - 1})

    for session_id in mine:
        for path in ('', '/messages', '/summary'):
            assert (await client.get(f'{API}/sessions/{session_id}{path}')).error_code == 'session_not_found'
    assert (await client.get(f'{API}/sessions?metadata.user_id=u1')).json() == []
    listed = (await client.get(f'{API}/sessions')).json()
    assert sorted(s['id'] for s in listed) == ['u2-a', 'u2-b'], "other people's sessions stay"
    assert [m['content'] for m in (await client.get(f'{API}/sessions/u2-a/messages')).json()] == ['not a secret']
    if store_kind.startswith('chroma'):
        hits = (await client.get(f'{API}/search?q=secret&limit=50')).json()
        assert {hit['session_id'] for hit in hits} == {'u2-a', 'u2-b'}, 'no vector of an erased session is found'

    # the idempotency records went too: the same create and append again are new writes, not replays
    again = await client.post(
        f'{API}/sessions', json={'metadata': {'user_id': 'u1'}}, headers={'Idempotency-Key': 'create-once'}
    )
    assert again.status == 201
    assert again.json()['created_at'] != created.json()['created_at'], 'created again, not the recorded answer'
    append = await client.post(
        f'{API}/sessions/{keyed}/messages', json=turn('kept once'), headers={'Idempotency-Key': 'a-1'}
    )
    assert append.status == 201
    assert [m['content'] for m in (await client.get(f'{API}/sessions/{keyed}/messages')).json()] == ['kept once']

    assert (await client.delete(f'{API}/sessions?metadata.user_id=u1')).json() == {'deleted': 1}
    assert (await client.delete(f'{API}/sessions?metadata.user_id=u1')).json() == {'deleted': 0}, 'done: 0 again'


@pytest.mark.parametrize('store_kind', ['in_memory'])
@pytest.mark.parametrize(
    ('query', 'message'),
    [
        ('', 'metadata.<key>: an erasure needs at least one filter (metadata.user_id=<value>, metadata.org=<value>)'),
        (
            'limit=10',
            'metadata.<key>: an erasure needs at least one filter (metadata.user_id=<value>, metadata.org=<value>)',
        ),
        ('metadata.email=a@b', 'metadata.email: filter on one of metadata.user_id, metadata.org'),
        ('metadata.user_id=a&metadata.user_id=b', 'metadata.user_id: give it at most once'),
    ],
)
async def test_an_erasure_without_a_filter_of_an_indexed_key_is_400_and_erases_nothing(
    client: CheckedClient, query: str, message: str
) -> None:
    await client.post(f'{API}/sessions', json={'id': 'kept', 'metadata': {'user_id': 'a', 'email': 'a@b'}})
    reply = await client.request('DELETE', f'{API}/sessions?{query}')
    assert reply.status == 400
    assert (reply.error_code, reply.json()['error']['message']) == ('invalid_parameter', message)
    assert (await client.get(f'{API}/sessions/kept')).status == 200


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis', 'redis_cluster'])
async def test_an_erased_session_s_streams_see_deleted_as_after_a_delete(
    raw_client: TestClient[Any, Any], store_kind: str
) -> None:
    await raw_client.post(f'{API}/sessions', json={'id': 'live', 'metadata': {'user_id': 'u1'}})
    async with raw_client.get(f'{API}/sessions/live/events?after=0') as stream_reply:
        assert stream_reply.status == 200
        stream = events(stream_reply.content)
        await raw_client.post(f'{API}/sessions/live/messages', json=turn('hi'))
        assert (await anext(stream)).kind == 'message'  # the stream is listening
        poll = asyncio.ensure_future(raw_client.get(f'{API}/sessions/live/messages?after=1&wait=30'))
        await asyncio.sleep(0)
        async with raw_client.delete(f'{API}/sessions?metadata.user_id=u1') as reply:
            assert await reply.json() == {'deleted': 1}
        assert await anext(stream) == Event('deleted', None, b'{}')
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        async with await poll as poll_reply:
            assert poll_reply.status == 404, 'a waiting long-poll answers as after a DELETE'


@pytest.mark.parametrize('store_kind', ['redis', 'redis_cluster'])
async def test_index_entries_whose_session_is_gone_are_dropped_not_counted(
    settings: Settings, store_kind: str, request: pytest.FixtureRequest
) -> None:
    """What a stop between a session's script and its index update leaves on Cluster (and an expiry on Redis)."""
    server = request.getfixturevalue('redis_cluster' if store_kind == 'redis_cluster' else 'redis_server')
    async with open_store(settings) as store:
        now = utc_now()
        for n in range(5):
            await store.create_session('t', SessionRecord(f's{n}', now, now, b'{"user_id":"u1"}', 0))
        redis = server.client() if store_kind == 'redis' else RedisCluster('127.0.0.1', server.nodes[0].port)
        try:
            for n in (1, 3):
                redis.delete(*[f'{settings.key_prefix}:{{t/s{n}}}:{part}' for part in ('meta', 'msgs', 'counts')])
            erased = await erasure.erase(store, 't', (('user_id', 'u1'),), batch=BATCH, erased=lambda _: None)
            assert erased == 3
            page, _ = await store.list_sessions(
                't', limit=10, after=None, with_messages=False, where=(('user_id', 'u1'),)
            )
            assert page == []
            assert not [key for key in redis.scan_iter(f'{settings.key_prefix}:*') if b':by:' in key]
        finally:
            redis.close()


async def test_an_erasure_stopped_by_a_redis_outage_is_finished_by_the_next(own_redis: RedisServer) -> None:
    settings = Settings(memory_type='redis', redis_url=own_redis.url, key_prefix='erase', redis_socket_timeout=2)
    where = (('user_id', 'u1'),)
    async with open_store(settings) as store:
        now = utc_now()
        for n in range(10):
            await store.create_session('t', SessionRecord(f's{n}', now, now, b'{"user_id":"u1"}', 0))
        await store.create_session('t', SessionRecord('theirs', now, now, b'{"user_id":"u2"}', 0))
        gone: list[str] = []

        def stop_after_a_step(session_id: str) -> None:
            gone.append(session_id)
            if len(gone) == BATCH:
                own_redis.stop(kill=True)  # SIGKILL while the erasure runs: only the AOF keeps what went

        with pytest.raises(BackendUnavailable):
            await erasure.erase(store, 't', where, batch=BATCH, erased=stop_after_a_step)
        own_redis.launch()
        deadline = asyncio.get_running_loop().time() + 60  # the store's connections come back by themselves
        while True:
            try:
                await store.ping()
                break
            except BackendUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert await erasure.erase(store, 't', where, batch=BATCH, erased=lambda _: None) == 10 - BATCH
        page, _ = await store.list_sessions('t', limit=20, after=None, with_messages=False, where=())
        assert [found.record.id for found in page] == ['theirs']


def test_the_document_declares_the_erasure_with_a_filter_per_indexed_key() -> None:
    from memsvc.openapi import build_openapi
    from memsvc.routes import routes

    document = build_openapi(Settings(indexed_metadata='user_id,org'), (routes,))
    operation = document['paths'][f'{API}/sessions']['delete']
    assert operation['operationId'] == 'eraseSessions'
    assert [p['name'] for p in operation['parameters']] == ['metadata.user_id', 'metadata.org']
    assert orjson.loads(orjson.dumps(operation['responses']['200']))  # described
