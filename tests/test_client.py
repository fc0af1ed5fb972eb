"""`memsvc.client` against a real `memsvc serve` on Redis: every route through the typed methods, the errors, the
retries through a Redis outage (one message stored), the If-Match loop, the event stream across a server restart,
and the blocking client as a layer over the async one."""

import asyncio
import inspect
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from memsvc.client import (
    ApiError,
    AsyncMemsvcClient,
    BackendUnavailable,
    Event,
    IdempotencyKeyReused,
    InvalidParameter,
    InvalidSessionId,
    MemsvcClient,
    MessageNotFound,
    NotSupported,
    PreconditionFailed,
    Retries,
    SessionExists,
    SessionNotFound,
    SummaryNotFound,
    TransportError,
    Unauthorized,
    metadata_patch,
)
from memsvc.client import errors as client_errors
from memsvc.models import merge_patch
from tests.client_server import KEY, Served, served
from tests.servers import free_port

__all__ = ['served']  # the fixture

PATIENT = Retries(attempts=200, deadline=60.0, backoff=0.05, max_backoff=0.5)
"""Retries that outlast an outage a test makes (a bound: each test ends the outage itself)."""


def _sid(tag: str) -> str:
    return f'{tag}-{uuid.uuid4().hex[:10]}'


@pytest.fixture
async def client(served: Served) -> AsyncIterator[AsyncMemsvcClient]:
    async with AsyncMemsvcClient(served.url, KEY, retries=PATIENT) as opened:
        yield opened


async def test_every_route_through_typed_methods(client: AsyncMemsvcClient) -> None:
    sid = _sid('routes')
    created = await client.create_session(sid, metadata={'user_id': '7'})
    assert created['id'] == sid
    assert created['metadata'] == {'user_id': '7'}
    assert isinstance(created['created_at'], datetime)
    with pytest.raises(SessionExists):
        await client.create_session(sid)
    first = await client.append(sid, {'role': 'user', 'content': 'Hi'})
    assert first['id'] == 1
    assert isinstance(first['timestamp'], datetime)
    pair = await client.append_many(sid, [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}])
    assert [m['id'] for m in pair] == [2, 3]
    assert [m['content'] for m in await client.get_messages(sid, limit=2)] == ['q', 'a']
    assert [m['id'] for m in await client.get_messages(sid, before=3)] == [1, 2]
    assert [m['id'] async for m in client.messages(sid, after=1, page_size=1)] == [2, 3]
    assert await client.get_message(sid, 2) == pair[0]
    assert await client.get_messages(sid, after=3, wait=1) == []

    window = await client.context(sid, max_tokens=4000, format='responses')
    assert window['format'] == 'responses'
    assert window['first_id'] == 1
    summary = await client.set_summary(sid, 'greetings', 1)
    assert (await client.get_summary(sid))['content'] == summary['content'] == 'greetings'
    await client.delete_summary(sid)
    with pytest.raises(SummaryNotFound):
        await client.get_summary(sid)

    fork = await client.fork(sid, _sid('fork'), through_id=2)
    assert fork['forked_from'] == {'session_id': sid, 'message_id': 2}
    assert len(fork['messages']) == 2
    updated = await client.update_metadata(sid, {'lang': 'de'})
    assert updated['metadata'] == {'user_id': '7', 'lang': 'de'}

    assert await client.truncate(sid, 2) == 1
    popped = await client.pop(sid)
    assert popped is not None
    assert popped['id'] == 2
    await client.delete_message(sid, 1)
    assert await client.pop(sid) is None
    with pytest.raises(MessageNotFound):
        await client.get_message(sid, 1)
    await client.clear_messages(sid)
    assert (await client.get_session(sid))['messages'] == []

    listed = [s['id'] async for s in client.sessions(page_size=1)]
    assert sid in listed
    assert fork['id'] in listed
    assert len(listed) == len(set(listed))
    page = await client.list_sessions(limit=1, include_messages=False)
    assert len(page.items) == 1
    assert page.cursor is not None
    with pytest.raises(NotSupported):
        await client.search('greeting')
    assert await client.ready() is True
    assert (await client.openapi())['openapi'].startswith('3.1')

    await client.delete_session(sid)
    with pytest.raises(SessionNotFound) as raised:
        await client.get_session(sid)
    assert raised.value.status == 404
    assert raised.value.request_id


async def test_erase_takes_one_person_s_sessions_and_answers_how_many(client: AsyncMemsvcClient) -> None:
    person, other = _sid('person'), _sid('other')
    mine = [(await client.create_session(metadata={'user_id': person}))['id'] for _ in range(3)]
    theirs = (await client.create_session(metadata={'user_id': other}))['id']
    await client.append(mine[0], {'role': 'user', 'content': 'hi'})
    assert await client.erase(user_id=person) == 3
    for sid in mine:
        with pytest.raises(SessionNotFound):
            await client.get_session(sid)
    assert (await client.get_session(theirs))['metadata'] == {'user_id': other}
    assert await client.erase(metadata={'user_id': person}) == 0, 'the same again: nothing left'
    with pytest.raises(InvalidParameter) as refused:
        await client.erase()
    assert refused.value.status is None, 'refused before sending'
    with pytest.raises(InvalidParameter) as answered:
        await client.erase(email='a@b')
    assert answered.value.status == 400
    assert await client.erase({'user_id': other}) == 1


async def test_errors_are_the_servers_codes_with_the_request_id(served: Served, client: AsyncMemsvcClient) -> None:
    sid = _sid('errors')
    with pytest.raises(InvalidSessionId) as local:
        await client.get_session('no/slash')
    assert local.value.status is None, 'refused before sending'
    await client.append(sid, {'role': 'user', 'content': 'x'}, idempotency_key='k-1')
    with pytest.raises(IdempotencyKeyReused) as reused:
        await client.append(sid, {'role': 'user', 'content': 'another'}, idempotency_key='k-1')
    assert reused.value.status == 422
    assert reused.value.code == 'idempotency_key_reused'
    stale = await client.get_versioned(sid)
    await client.append(sid, {'role': 'user', 'content': 'y'})
    with pytest.raises(PreconditionFailed):
        await client.update_metadata(sid, {'a': 1}, if_match=stale)
    async with AsyncMemsvcClient(served.url, 'wrong-key') as outsider:
        with pytest.raises(Unauthorized) as refused:
            await outsider.get_session(sid)
    assert refused.value.status == 401
    assert len(refused.value.request_id or '') == 32
    with pytest.raises(ApiError) as unknown:
        await client.context(sid, max_tokens=0)
    assert isinstance(unknown.value, client_errors.InvalidParameter)
    assert unknown.value.status == 400
    # every code of the server's error classes has its class here, named as the server names it
    for server_class in client_errors.server_classes():
        assert client_errors.BY_CODE[server_class.code].code == server_class.code
        assert client_errors.twin(server_class).__name__ == server_class.__name__


async def test_no_answer_is_a_transport_error_after_bounded_attempts() -> None:
    async with AsyncMemsvcClient(f'http://127.0.0.1:{free_port()}', retries=Retries(attempts=3, backoff=0.01)) as c:
        with pytest.raises(TransportError):
            await c.get_session('nobody-listens')


@pytest.mark.parametrize('outage', ['pause', 'kill'])
async def test_append_through_a_redis_outage_is_stored_once(
    served: Served, client: AsyncMemsvcClient, outage: str
) -> None:
    """Redis stops answering (paused: the server's first attempt times out with its write queued in Redis, which
    runs it when it resumes; or killed: every attempt fails until it is back). The client's retries carry the
    same Idempotency-Key, so however many attempts went, the message is stored once."""
    sid = _sid(f'outage-{outage}')
    await client.append(sid, {'role': 'user', 'content': 'before'})
    route = '/sessions/{session_id}/messages'
    refused_before = served.count('POST', route, 503)
    if outage == 'pause':
        served.redis.pause()
    else:
        served.redis.stop(kill=True)
    try:
        append = asyncio.create_task(client.append(sid, {'role': 'assistant', 'content': 'once'}))
        await asyncio.to_thread(
            served.wait_for, 'a 503 to the append', lambda: served.count('POST', route, 503) > refused_before
        )
    finally:
        if outage == 'pause':
            served.redis.resume()
        else:
            served.redis.launch()
    stored = await append
    contents = [m['content'] for m in await client.get_messages(sid)]
    assert contents == ['before', 'once']
    assert stored['id'] == 2


async def test_a_write_without_a_key_is_not_retried(served: Served, client: AsyncMemsvcClient) -> None:
    sid = _sid('unkeyed')
    await client.create_session(sid)
    route = '/sessions/{session_id}'
    before = served.count('PATCH', route, 503)
    served.redis.stop(kill=True)
    try:
        with pytest.raises(BackendUnavailable) as raised:
            await client.update_metadata(sid, {'n': 1})
    finally:
        served.redis.launch()
    assert raised.value.status == 503
    assert raised.value.retry_after == 1.0
    assert served.count('PATCH', route, 503) == before + 1, 'sent once'


async def test_concurrent_modify_calls_all_land(client: AsyncMemsvcClient) -> None:
    sid = _sid('modify')
    await client.create_session(sid, metadata={'count': 0, 'by': {}})

    def bump(n: int) -> Any:
        def apply(metadata: dict[str, Any]) -> dict[str, Any]:
            return {**metadata, 'count': metadata['count'] + 1, 'by': {**metadata['by'], str(n): True}}

        return apply

    await asyncio.gather(*(client.modify(sid, bump(n)) for n in range(8)))
    metadata = (await client.get_session(sid))['metadata']
    assert metadata == {'count': 8, 'by': {str(n): True for n in range(8)}}


def test_metadata_patch_turns_old_into_new() -> None:
    old = {'a': 1, 'b': {'c': 2, 'd': 3}, 'e': [1], 'f': 'x'}
    new = {'a': 1, 'b': {'c': 4}, 'e': [1, 2], 'g': {'h': 1}, 'f': 1}
    assert merge_patch(old, metadata_patch(old, new)) == new
    assert metadata_patch(old, old) == {}


async def test_events_resume_across_a_server_restart(served: Served, client: AsyncMemsvcClient) -> None:
    """The stream ends when the server stops (SIGTERM); the iterator reconnects to the new process with the last
    id it gave, and gets every message once, in order, also those written while it was away."""
    sid = _sid('events')
    await client.append(sid, {'role': 'user', 'content': 'm1'})
    got: list[Event] = []
    stream = client.events(sid, after=1)

    async def next_message() -> Event:
        event = await asyncio.wait_for(anext(stream), 60)
        got.append(event)
        return event

    reading = asyncio.create_task(next_message())
    await client.append(sid, {'role': 'user', 'content': 'm2'})
    assert (await reading).id == 2
    reading = asyncio.create_task(next_message())
    await client.append(sid, {'role': 'user', 'content': 'm3'})
    assert (await reading).id == 3
    await asyncio.to_thread(served.stop)
    await asyncio.to_thread(served.start)
    await client.append_many(sid, [{'role': 'user', 'content': 'm4'}, {'role': 'user', 'content': 'm5'}])
    await next_message()
    await next_message()
    await client.clear_messages(sid)
    await next_message()
    await client.delete_session(sid)
    await next_message()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert [(e.kind, e.id) for e in got] == [
        ('message', 2), ('message', 3), ('message', 4), ('message', 5), ('cleared', None), ('deleted', None)
    ]  # fmt: skip
    assert got[2].message is not None
    assert got[2].message['content'] == 'm4'


async def test_events_start_with_the_next_message(served: Served, client: AsyncMemsvcClient) -> None:
    sid = _sid('next')
    await client.append(sid, {'role': 'user', 'content': 'stored before'})
    streams = served.gauge('memsvc_open_streams')
    stream = client.events(sid)
    reading = asyncio.create_task(anext(stream))
    await asyncio.to_thread(
        served.wait_for, 'the stream to open', lambda: served.gauge('memsvc_open_streams') > streams
    )
    await client.append(sid, {'role': 'user', 'content': 'new'})
    event = await asyncio.wait_for(reading, 60)
    assert (event.kind, event.id) == ('message', 2)
    await stream.aclose()


async def test_export_and_import_stream_ndjson(client: AsyncMemsvcClient) -> None:
    sid = _sid('export')
    await client.append_many(sid, [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}])
    await client.set_summary(sid, 'asked', 1)
    mine = [line async for line in client.export_lines() if orjson.loads(line)['id'] == sid]
    assert len(mine) == 1
    assert mine[0].endswith(b'\n')
    (typed,) = [line async for line in client.export() if line['id'] == sid]
    assert typed['next_id'] == 3
    assert [m['content'] for m in typed['messages']] == ['q', 'a']
    assert isinstance(typed['created_at'], datetime)

    moved = {**orjson.loads(mine[0]), 'id': _sid('imported')}

    async def source() -> AsyncIterator[bytes]:
        yield orjson.dumps(moved)  # without its newline: the client adds it

    assert (await client.import_lines(source()))['imported'] == 1
    again = await client.import_lines([orjson.dumps(moved) + b'\n'])
    assert (again['imported'], again['skipped']) == (0, 1)
    assert (await client.get_session(moved['id']))['messages'] == (await client.get_session(sid))['messages']
    assert (await client.get_summary(moved['id']))['content'] == 'asked'


async def test_one_persons_sessions_by_metadata_listed_paged_and_exported(client: AsyncMemsvcClient) -> None:
    alice, bob = _sid('alice'), _sid('bob')
    ids = {name: _sid(name) for name in ('a1', 'b1', 'a2', 'a3')}
    for name, sid in ids.items():
        await client.create_session(sid, metadata={'user_id': alice if name.startswith('a') else bob})
    hers = [ids['a3'], ids['a2'], ids['a1']]
    assert [s['id'] async for s in client.sessions(page_size=2, metadata={'user_id': alice})] == hers
    page = await client.list_sessions(limit=2, metadata={'user_id': alice})
    assert [s['id'] for s in page.items] == hers[:2]
    assert page.cursor is not None
    rest = await client.list_sessions(limit=2, cursor=page.cursor, metadata={'user_id': alice})
    assert ([s['id'] for s in rest.items], rest.cursor) == (hers[2:], None)
    assert [line['id'] async for line in client.export(metadata={'user_id': bob})] == [ids['b1']]
    with pytest.raises(ApiError) as refused:
        await client.list_sessions(metadata={'color': 'red'})
    assert (refused.value.status, refused.value.code) == (400, 'invalid_parameter')
    assert 'metadata.user_id' in refused.value.message

    def blocking_listing() -> list[str]:
        with MemsvcClient(client.base_url, KEY) as blocking:
            return [s['id'] for s in blocking.sessions(metadata={'user_id': alice})]

    assert await asyncio.to_thread(blocking_listing) == hers


def test_the_blocking_client_is_the_async_one(served: Served) -> None:
    public = {name for name, _ in inspect.getmembers(AsyncMemsvcClient, inspect.isfunction) if not name.startswith('_')}
    assert public - {'aclose'} <= set(dir(MemsvcClient)), 'every method has its blocking twin'
    sid = _sid('blocking')
    with MemsvcClient(served.url, KEY) as blocking:
        assert blocking.append(sid, {'role': 'user', 'content': 'hi'})['id'] == 1
        assert [m['content'] for m in blocking.messages(sid)] == ['hi']
        assert blocking.modify(sid, lambda metadata: {'n': 1})['metadata'] == {'n': 1}
        assert blocking.erase(user_id=_sid('nobody')) == 0
        with pytest.raises(SessionNotFound):
            blocking.get_session(_sid('missing'))
        assert MemsvcClient.get_messages.__doc__ == AsyncMemsvcClient.get_messages.__doc__
        assert any(orjson.loads(line)['id'] == sid for line in blocking.export_lines())
    assert requests.get(served.url + '/healthz', timeout=10).status_code == 200


def test_the_readme_example_runs(served: Served) -> None:
    readme = (Path(__file__).parent.parent / 'README.md').read_text()
    section = readme[readme.index('## Python client') :]
    example = section[section.index('```python\n') + len('```python\n') : section.index('```\n')]
    code = example.replace("AsyncMemsvcClient('http://127.0.0.1:8080')", f'AsyncMemsvcClient({served.url!r}, {KEY!r})')
    assert code != example
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert '404 session_not_found ' in done.stdout
