"""Export and import (README, "Export and import"): the round trip between stores byte for byte, identical lines
skipped, different ones conflicts left alone or replaced, bad lines refused whole by their number, the per-line limit,
ids and the next id kept, tenants apart, each exported line one session at one moment."""

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import ClientPayloadError
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc import export as export_module
from memsvc.app import create_app
from memsvc.appkeys import MANAGER
from memsvc.errors import BackendUnavailable
from memsvc.export import Exporter
from memsvc.models import SessionRecord, utc_now
from memsvc.settings import Settings
from memsvc.stores import Store
from memsvc.stores.base import ExportRead
from memsvc.stores.redis_client import create_client
from memsvc.stores.redis_reads import RedisKeys
from tests.conftest import make_settings
from tests.helpers import API, body
from tests.test_tenants import ALICE, BOB

NDJSON = {'Content-Type': 'application/x-ndjson'}
T = 'default'


async def served(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


async def export(client: TestClient[Any, Any], **kwargs: Any) -> bytes:
    async with client.get(f'{API}/export', **kwargs) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers['Content-Type'] == 'application/x-ndjson'
        return await reply.read()


async def import_(client: TestClient[Any, Any], data: bytes, **params: str) -> dict[str, Any]:
    async with client.post(f'{API}/import', data=data, headers=NDJSON, params=params) as reply:
        assert reply.status == 200, await reply.text()
        result: dict[str, Any] = await reply.json()
        return result


async def post(client: TestClient[Any, Any], path: str, payload: Any, status: int = 201) -> Any:
    async with client.post(f'{API}{path}', json=payload) as reply:
        assert reply.status == status, await reply.text()
        return await reply.json()


async def varied(client: TestClient[Any, Any]) -> None:
    """Sessions with what a line carries: metadata, a summary, a fork, gaps (one message deleted, a tail truncated),
    tool calls, message metadata and names, text that JSON escapes, numbers written out."""
    await post(client, '/sessions', {'id': 'trip', 'metadata': {'user_id': 'u1', 'score': 1e15, 'tags': ['a', 'é']}})
    calls = [{'id': 'call_1', 'type': 'function', 'function': {'name': 'book', 'arguments': '{"day":"fri"}'}}]
    await post(
        client,
        '/sessions/trip/messages',
        [
            {'role': 'system', 'content': 'Be brief.'},
            {'role': 'user', 'content': 'A "train"\n to Wien — 🚆', 'name': 'ann', 'metadata': {'n': 0.1}},
            {'role': 'assistant', 'content': '', 'tool_calls': calls},
            {'role': 'tool', 'content': '{"ok":true}', 'tool_call_id': 'call_1'},
            {'role': 'assistant', 'content': 'Booked.'},
            {'role': 'user', 'content': 'thanks'},
        ],
    )
    async with client.put(f'{API}/sessions/trip/summary', json={'content': 'booked a train', 'through_id': 4}) as r:
        assert r.status == 200
    await post(client, '/sessions/trip/fork', {'id': 'trip-alt', 'through_id': 2, 'metadata': {'user_id': 'u2'}})
    async with client.delete(f'{API}/sessions/trip/messages/3') as r:
        assert r.status == 200
    async with client.delete(f'{API}/sessions/trip/messages', params={'after': '5'}) as r:
        assert r.status == 200
    await post(client, '/sessions', {'id': 'empty'})


@pytest.mark.parametrize('target', ['redis', 'chroma_server'])
async def test_round_trip_in_memory_to_another_store_and_back_is_byte_for_byte(
    aiohttp_client: AiohttpClient, request: pytest.FixtureRequest, target: str
) -> None:
    source = await served(aiohttp_client, make_settings('in_memory', request))
    await varied(source)
    exported = await export(source)
    lines = [orjson.loads(line) for line in exported.splitlines()]
    assert [line['id'] for line in lines] == ['empty', 'trip', 'trip-alt'], 'newest updated_at first'
    trip = lines[1]
    assert [m['id'] for m in trip['messages']] == [1, 2, 4, 5]
    assert trip['next_id'] == 7
    assert trip['summary']['through_id'] == 4
    assert 'forked_from' not in trip
    assert lines[2]['forked_from'] == {'session_id': 'trip', 'message_id': 2}
    assert list(trip)[-1] == 'messages', 'messages come last, so that a long line is read in pieces'

    copy = await served(aiohttp_client, make_settings(target, request))
    assert await import_(copy, exported) == {'imported': 3, 'skipped': 0, 'conflicts': 0, 'failed': 0, 'errors': []}
    assert await export(copy) == exported
    async with copy.get(f'{API}/sessions/trip') as reply:
        stored = await reply.json()
    assert stored['messages'] == trip['messages'], 'ids, timestamps and fields as they were'
    async with copy.get(f'{API}/sessions/trip/summary') as reply:
        assert (await reply.json()) == trip['summary']
    replaced = await import_(copy, exported, on_conflict='replace')
    assert (replaced['imported'], replaced['failed']) == (3, 0)
    assert await export(copy) == exported, 'replaced by the same sessions'
    appended = await post(copy, '/sessions/trip/messages', {'role': 'user', 'content': 'and back?'})
    assert appended['id'] == 7, 'the next id is kept: ids cut by the truncation are never given again'
    async with copy.get(f'{API}/sessions/trip/context') as reply:
        assert reply.status == 200, 'the token records were counted again'


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis'])
async def test_identical_is_skipped_different_is_a_conflict_left_alone_and_replace_overwrites(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await served(aiohttp_client, settings)
    await post(client, '/sessions', {'id': 's', 'metadata': {'k': 'v'}})
    await post(client, '/sessions/s/messages', [{'role': 'user', 'content': 'one'}, {'role': 'user', 'content': 'two'}])
    line = await export(client)
    assert await import_(client, line) == {'imported': 0, 'skipped': 1, 'conflicts': 0, 'failed': 0, 'errors': []}

    await post(client, '/sessions/s/messages', {'role': 'user', 'content': 'three'})
    before = await export(client)
    result = await import_(client, line)
    assert (result['skipped'], result['conflicts']) == (0, 1)
    assert await export(client) == before, 'a conflict is left as it is'

    edited = orjson.loads(line)
    edited['messages'][1]['content'] = 'TWO'
    result = await import_(client, orjson.dumps(edited) + b'\n')
    assert result['conflicts'] == 1, 'one message differs'

    result = await import_(client, line, on_conflict='replace')
    assert result['imported'] == 1
    assert await export(client) == line, 'replaced whole, messages after the line gone'
    async with client.get(f'{API}/sessions/s') as reply:
        assert reply.headers['ETag'] != '"0"', 'a replace moves the version on'


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis'])
async def test_a_bad_line_is_refused_by_its_number_and_nothing_of_it_is_written(
    aiohttp_client: AiohttpClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr('memsvc.importer.BATCH', 10)  # the bad message comes after batches were written
    client = await served(aiohttp_client, settings)
    stamp = '2026-01-01T00:00:00Z'
    first: dict[str, Any] = {'id': 1, 'role': 'user', 'content': 'hi', 'timestamp': stamp}
    good: dict[str, Any] = {
        'id': 'good', 'created_at': stamp, 'updated_at': stamp, 'metadata': {}, 'next_id': 2, 'messages': [first]
    }  # fmt: skip
    many = [{'id': n, 'role': 'user', 'content': f'm{n}', 'timestamp': stamp} for n in range(1, 60)]
    many[45]['content'] = 'x' * (settings.max_content_chars + 1)
    long = {**good, 'id': 'long', 'next_id': 60, 'messages': many}
    gapped = {**good, 'id': 'gapped', 'messages': [{**first, 'id': 2}]}  # at next_id
    body_ = b'\n'.join(
        [
            orjson.dumps(good),
            b'{"id": "broken", ',
            orjson.dumps(long),
            b'',
            orjson.dumps(gapped),
            orjson.dumps({**good, 'id': 'bad id!'}),
            b'[1, 2]',
        ]
    )
    result = await import_(client, body_)
    assert (result['imported'], result['failed']) == (1, 5)
    assert [(e['line'], e['code']) for e in result['errors']] == [
        (2, 'malformed_json'),
        (3, 'validation_error'),
        (5, 'validation_error'),
        (6, 'validation_error'),
        (7, 'malformed_json'),
    ]
    assert 'messages[45].content' in result['errors'][1]['message']
    assert 'messages[0].id' in result['errors'][2]['message']
    async with client.get(f'{API}/sessions/long') as reply:
        assert reply.status == 404, 'nothing of a refused line is visible'
    assert [orjson.loads(line)['id'] for line in (await export(client)).splitlines()] == ['good']
    if settings.memory_type == 'redis':
        redis = create_client(settings)
        try:
            assert await redis.keys(f'{settings.key_prefix}:*:import:*') == [], 'the hidden copy went too'
        finally:
            await redis.aclose()


async def test_the_per_line_limit_is_what_the_limits_let_a_session_hold(
    aiohttp_client: AiohttpClient, request: pytest.FixtureRequest
) -> None:
    settings = make_settings('in_memory', request, max_messages_per_session=2, max_body_bytes=1024)
    assert settings.import_line_bytes() == 4096 + 16384 + 6 * 100_000 + 2 * (4 * 1024 + 65)
    assert make_settings('in_memory', request).import_line_bytes() == 16 * 1024**3, 'no bound on a session'
    client = await served(aiohttp_client, make_settings('in_memory', request, max_import_line_bytes=2048))
    line = {'id': 'big', 'created_at': '2026-01-01T00:00:00Z', 'updated_at': '2026-01-01T00:00:00Z', 'metadata': {},
            'next_id': 2, 'messages': [{'id': 1, 'role': 'user', 'content': 'x' * 3000,
                                        'timestamp': '2026-01-01T00:00:00Z'}]}  # fmt: skip
    small = {**line, 'id': 'small', 'messages': []}
    result = await import_(client, orjson.dumps(line) + b'\n' + orjson.dumps(small))
    assert result['imported'] == 1
    assert result['errors'] == [{'line': 1, 'code': 'line_too_long', 'message': result['errors'][0]['message']}]


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis_cluster', 'chroma_server'])
async def test_another_tenants_sessions_are_never_exported(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    client = await served(
        aiohttp_client, Settings(**{**settings.model_dump(), 'api_keys': 'alice=key-of-alice,bob=key-of-bob'})
    )
    async with client.post(f'{API}/sessions', json={'id': 'hers'}, headers=ALICE) as reply:
        assert reply.status == 201
    assert await export(client, headers=BOB) == b''
    line = await export(client, headers=ALICE)
    assert orjson.loads(line)['id'] == 'hers'
    async with client.post(f'{API}/import', data=line, headers={**NDJSON, **BOB}) as reply:
        assert (await reply.json())['imported'] == 1, "bob's copy is his own session"
    async with client.get(f'{API}/export') as reply:
        assert reply.status == 401


async def test_a_filtered_export_has_only_the_matching_sessions_of_the_tenant(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await served(
        aiohttp_client, Settings(**{**settings.model_dump(), 'api_keys': 'alice=key-of-alice,bob=key-of-bob'})
    )
    for session_id, user_id, headers in [
        ('a-old', 'u1', ALICE),
        ('a-other', 'u2', ALICE),
        ('a-new', 'u1', ALICE),
        ('a-number', 1, ALICE),
        ('b-1', 'u1', BOB),
    ]:
        async with client.post(
            f'{API}/sessions/{session_id}/messages', json=[{'role': 'user', 'content': session_id}], headers=headers
        ) as reply:
            assert reply.status == 201, await reply.text()
        async with client.patch(
            f'{API}/sessions/{session_id}', json={'metadata': {'user_id': user_id}}, headers=headers
        ) as reply:
            assert reply.status == 200, await reply.text()

    everything = (await export(client, headers=ALICE)).splitlines(keepends=True)
    by_id = {orjson.loads(line)['id']: line for line in everything}
    assert list(by_id) == ['a-number', 'a-new', 'a-other', 'a-old']
    filtered = await export(client, headers=ALICE, params={'metadata.user_id': 'u1'})
    assert filtered == by_id['a-new'] + by_id['a-old'], 'the very lines of the whole export, newest first'
    assert await export(client, headers=ALICE, params={'metadata.user_id': 'nobody'}) == b''
    bobs = await export(client, headers=BOB, params={'metadata.user_id': 'u1'})
    assert [orjson.loads(line)['id'] for line in bobs.splitlines()] == ['b-1'], "another tenant's are never exported"

    async with client.get(f'{API}/export', params={'metadata.color': 'red'}, headers=ALICE) as reply:
        assert reply.status == 400
        error = (await reply.json())['error']
    assert error['code'] == 'invalid_parameter'
    assert 'metadata.user_id' in error['message']


class Meddling:
    """A store whose first `read_export` of a session is followed by a change to it, before the rest is read."""

    def __init__(self, store: Store, change: Any) -> None:
        self.inner, self._change, self._done = store, change, False

    def export_ids(self, tenant: str) -> AsyncIterator[list[str]]:
        return self.inner.export_ids(tenant)

    async def read_export(self, tenant: str, sid: str, after: int, limit: int, budget: int) -> ExportRead | None:
        read = await self.inner.read_export(tenant, sid, after, limit, budget)
        if not self._done:
            self._done = True
            await self._change()
        return read


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis'])
@pytest.mark.parametrize('change', ['append', 'delete'])
async def test_each_line_is_the_session_at_one_moment(
    store: Store, store_kind: str, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long session is read in several steps; an append meanwhile is not in the line, a message deleted before
    it was read makes the line be read again, whole and as the session is after it."""
    monkeypatch.setattr(export_module, 'READ_MESSAGES', 4)
    now = (await store.append_messages(T, 's', [body(f'm{n}') for n in range(1, 11)], utc_now())).messages

    async def meddle() -> None:
        if change == 'append':
            await store.append_messages(T, 's', [body('late')], utc_now())
        else:
            await store.delete_message(T, 's', 8, utc_now())

    pieces = [piece async for piece in Exporter(Meddling(store, meddle), T).lines()]  # type: ignore[arg-type]
    line = orjson.loads(b''.join(pieces))
    expected = [orjson.loads(m) for m in now]
    if change == 'delete':
        expected = [m for m in expected if m['id'] != 8]
    assert line['messages'] == expected
    assert line['next_id'] == 11, 'as the first read found it'


class Failing(Meddling):
    """A store that stops answering after its first session's read."""

    async def read_export(self, tenant: str, sid: str, after: int, limit: int, budget: int) -> ExportRead | None:
        if self._done:
            raise BackendUnavailable('gone')
        self._done = True
        return await self.inner.read_export(tenant, sid, after, limit, budget)


async def test_an_export_that_fails_once_begun_ends_without_its_last_chunk(
    aiohttp_client: AiohttpClient, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, 'SEND_BYTES', 1)
    monkeypatch.setattr(export_module, 'AT_ONCE', 1)
    client = await served(aiohttp_client, make_settings('in_memory', request))
    for name in ('a', 'b'):
        await post(client, '/sessions', {'id': name})
    app = client.app
    assert app is not None
    manager = app[MANAGER]
    manager.store = Failing(manager.store, None)
    async with client.get(f'{API}/export') as reply:
        assert reply.status == 200
        with pytest.raises(ClientPayloadError):
            await reply.read()


def _old_line(session_id: str, user_id: str, days: int) -> bytes:
    """An export line of a session last written `days` ago."""
    moment = (utc_now() - timedelta(days=days)).isoformat().replace('+00:00', 'Z')
    message = {'id': 1, 'role': 'user', 'content': 'long ago', 'timestamp': moment}
    line = {
        'id': session_id,
        'created_at': moment,
        'updated_at': moment,
        'metadata': {'user_id': user_id},
        'next_id': 2,
        'messages': [message],
    }
    return orjson.dumps(line) + b'\n'


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis', 'redis_cluster'])
async def test_an_imported_sessions_idle_ttl_starts_again_at_the_import(
    aiohttp_client: AiohttpClient, store_kind: str, request: pytest.FixtureRequest
) -> None:
    ttl = 100
    settings = make_settings(store_kind, request, session_ttl_seconds=ttl)
    client = await served(aiohttp_client, settings)
    store = client.app[MANAGER].store
    # 16 sessions last written two days ago (the most one write's sweep looks at), and one idle past the TTL
    lines = b''.join(_old_line(f'old-{n}', 'u1', 2) for n in range(16))
    assert (await import_(client, lines))['imported'] == 16, 'not refused for being idle longer than the TTL'
    past = utc_now() - timedelta(seconds=3 * ttl)
    await store.create_session(T, SessionRecord('idle', past, past, b'{"user_id":"u1"}', 0))
    await post(client, '/sessions/busy/messages', [{'role': 'user', 'content': 'now'}])  # a write: the sweep runs

    found = await (await client.get(f'{API}/sessions/old-0')).json()
    assert found['updated_at'] == orjson.loads(lines.splitlines()[0])['updated_at'], 'updated_at kept as stored'
    async with client.get(f'{API}/sessions', params={'metadata.user_id': 'u1', 'include_messages': 'false'}) as reply:
        listed = [session['id'] for session in await reply.json()]
    imported = [f'old-{n}' for n in reversed(range(16))]  # newest first
    if store_kind == 'in_memory':
        assert listed == ['idle', *imported]  # no idle TTL in memory: nothing expires
        return
    assert listed == imported, 'the idle one left the listing; the imported ones are listed'
    raw = create_client(settings)
    try:
        keys = RedisKeys(settings.key_prefix, T)
        for n in range(16):
            left = await raw.pttl(keys.meta(f'old-{n}'))
            assert (ttl - 30) * 1000 < left <= ttl * 1000, 'the whole TTL, from the import'
            assert await raw.zscore(keys.sessions(), f'old-{n}') is not None, 'the sweep left it listed'
        assert await raw.zscore(keys.sessions(), 'idle') is None, 'the sweep went past them to the idle one'
    finally:
        await raw.aclose()


def _line(session_id: str, content: str = 'hi') -> dict[str, Any]:
    stamp = '2026-01-01T00:00:00Z'
    message = {'id': 1, 'role': 'user', 'content': content, 'timestamp': stamp}
    times = {'created_at': stamp, 'updated_at': stamp}
    return {'id': session_id, **times, 'metadata': {}, 'next_id': 2, 'messages': [message]}


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis'])
async def test_many_lines_import_as_if_one_after_another(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    """Lines are imported several at a time; two lines of one session still meet in file order, and the errors
    come in line order."""
    client = await served(aiohttp_client, settings)
    lines = [_line(f's{n}') for n in range(40)]
    lines[5:5] = [_line('twice'), _line('twice'), _line('twice', 'changed')]  # lines 6, 7, 8
    lines[30:30] = [{'id': 'bad id!'}, {**_line('late'), 'next_id': 1}]  # lines 31, 32
    result = await import_(client, b'\n'.join(orjson.dumps(line) for line in lines))
    assert (result['imported'], result['skipped'], result['conflicts'], result['failed']) == (41, 1, 1, 2)
    assert [(e['line'], e['code']) for e in result['errors']] == [(31, 'validation_error'), (32, 'validation_error')]
    async with client.get(f'{API}/sessions/twice/messages') as reply:
        assert [m['content'] for m in await reply.json()] == ['hi'], 'the first line of it, the conflict left alone'
    exported = {orjson.loads(line)['id'] for line in (await export(client)).splitlines()}
    assert exported == {f's{n}' for n in range(40)} | {'twice'}


class FailingImport:
    """The store, but the `fail_at`th import of a session finds the backend gone."""

    def __init__(self, store: Store, fail_at: int) -> None:
        self.inner, self._left = store, fail_at

    def importing(self, tenant: str, image: Any, *, replace: bool) -> Any:
        self._left -= 1
        if self._left == 0:
            raise BackendUnavailable('gone')
        return self.inner.importing(tenant, image, replace=replace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_an_import_whose_store_goes_away_is_503_and_leaves_no_half_written_session(
    aiohttp_client: AiohttpClient, request: pytest.FixtureRequest
) -> None:
    settings = make_settings('redis', request)
    client = await served(aiohttp_client, settings)
    app = client.app
    assert app is not None
    app[MANAGER].store = FailingImport(app[MANAGER].store, fail_at=20)
    many = [{'id': n, 'role': 'user', 'content': f'm{n}', 'timestamp': '2026-01-01T00:00:00Z'} for n in range(1, 301)]
    body_ = b'\n'.join(orjson.dumps({**_line(f's{n}'), 'next_id': 301, 'messages': many}) for n in range(40))
    async with client.post(f'{API}/import', data=body_, headers=NDJSON) as reply:
        assert reply.status == 503
        assert (await reply.json())['error']['code'] == 'backend_unavailable'
    redis = create_client(settings)
    try:
        assert await redis.keys(f'{settings.key_prefix}:*:import:*') == [], 'no hidden copy left behind'
    finally:
        await redis.aclose()
    for line in (await export(client)).splitlines():
        assert len(orjson.loads(line)['messages']) == 300, 'a session is there whole or not at all'
    result = await import_(client, body_)
    assert result['imported'] + result['skipped'] == 40, 'the same import again finishes the job'
