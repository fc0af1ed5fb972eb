"""Long-polls and event streams in one process, and two app instances sharing a Redis (or Cluster): each
instance has its own subscription, so a write through one wakes the other as it would another replica."""

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.appkeys import HUB
from tests.conftest import make_settings
from tests.events_client import Event, comments, events, eventually
from tests.helpers import API
from tests.test_metrics import samples

Client = TestClient[Any, Any]
LOCAL_AND_REDIS = ['in_memory', 'redis', 'redis_cluster']


async def _app(aiohttp_client: AiohttpClient, kind: str, request: pytest.FixtureRequest, **overrides: Any) -> Client:
    return await aiohttp_client(create_app(make_settings(kind, request, **overrides)))


async def _append(client: Client, session: str, content: str) -> dict[str, Any]:
    response = await client.post(f'{API}/sessions/{session}/messages', json={'role': 'user', 'content': content})
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def _listening(client: Client, sessions: int = 1) -> None:
    """Until the app's hub has a listener on `sessions` sessions (the request is waiting, subscribed)."""

    async def check() -> bool:
        return bool(client.app[HUB].listening() >= sessions)

    await eventually(check, 'the request waits')


# --- long-poll -------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', [*LOCAL_AND_REDIS, 'chroma', 'chroma_server'])
async def test_a_long_poll_answers_the_message_written_while_it_waits(
    kind: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    """On Chroma in server mode the other instance's write reaches the waiting one by its poll."""
    reader = await _app(aiohttp_client, kind, request)
    one_process = kind in ('in_memory', 'chroma')
    writer = reader if one_process else await _app(aiohttp_client, kind, request)  # another replica
    first = await _append(writer, 'lp', 'one')
    poll = asyncio.ensure_future(reader.get(f'{API}/sessions/lp/messages?after={first["id"]}&wait=60'))
    await _listening(reader)
    assert not poll.done()
    second = await _append(writer, 'lp', 'two')
    response = await asyncio.wait_for(poll, 20)
    assert response.status == 200
    assert await response.json() == [second]
    if kind.startswith('redis'):
        assert reader.app[HUB].poll_seconds is None, 'woken by the subscription, not by polling'


async def test_a_long_poll_answers_at_once_when_a_message_follows_after(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    first = await _append(client, 'now', 'one')
    response = await asyncio.wait_for(client.get(f'{API}/sessions/now/messages?after=0&wait=60'), 20)
    assert await response.json() == [first]
    assert client.app[HUB].listening() == 0


async def test_a_long_poll_answers_an_empty_list_at_its_deadline(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    first = await _append(client, 'quiet', 'one')
    response = await asyncio.wait_for(client.get(f'{API}/sessions/quiet/messages?after={first["id"]}&wait=1'), 20)
    assert response.status == 200
    assert await response.read() == b'[]'


async def test_a_long_poll_on_an_unknown_session_is_404_at_once(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    response = await asyncio.wait_for(client.get(f'{API}/sessions/nobody/messages?after=0&wait=60'), 20)
    assert response.status == 404
    assert (await response.json())['error']['code'] == 'session_not_found'


@pytest.mark.parametrize(
    'query',
    ['wait=5', 'after=1&wait=0', 'after=1&wait=61', 'after=1&wait=abc', 'after=1&wait=-1', 'after=1&wait=5&wait=6'],
)
async def test_bad_wait_values_are_400(
    query: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    await _append(client, 'bad', 'one')
    response = await client.get(f'{API}/sessions/bad/messages?{query}')
    assert response.status == 400
    body = await response.json()
    assert body['error']['code'] == 'invalid_parameter'
    assert 'wait' in body['error']['message']


# --- the event stream ------------------------------------------------------------------------


@pytest.mark.parametrize('kind', LOCAL_AND_REDIS)
async def test_a_stream_sends_each_change_as_the_list_stores_it(
    kind: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    reader = await _app(aiohttp_client, kind, request)
    writer = reader if kind == 'in_memory' else await _app(aiohttp_client, kind, request)
    await _append(writer, 'live', 'before the stream')
    async with reader.get(f'{API}/sessions/live/events') as response:
        assert response.status == 200
        assert response.headers['Content-Type'] == 'text/event-stream'
        assert response.headers['Cache-Control'] == 'no-cache'
        assert 'X-Request-ID' in response.headers
        stream = events(response.content)
        await _listening(reader)
        for content in ('héllo', 'with "quotes"\nand a newline'):
            await _append(writer, 'live', content)
        received = [await anext(stream), await anext(stream)]
        listed = await (await writer.get(f'{API}/sessions/live/messages?after=1')).read()
        assert [e.kind for e in received] == ['message', 'message']
        assert [e.id for e in received] == ['2', '3']
        assert b'[' + b','.join(e.data for e in received) + b']' == listed  # byte for byte

        assert (await writer.delete(f'{API}/sessions/live/messages')).status == 200
        await _append(writer, 'live', 'after the clear')
        assert await anext(stream) == Event('cleared', None, b'{}')
        after_clear = await anext(stream)
        assert (after_clear.id, orjson.loads(after_clear.data)['content']) == ('4', 'after the clear')

        assert (await writer.delete(f'{API}/sessions/live')).status == 200
        assert await anext(stream) == Event('deleted', None, b'{}')
        with pytest.raises(StopAsyncIteration):
            await anext(stream)  # the stream ends after `deleted`
    assert reader.app[HUB].open_streams == 0
    assert reader.app[HUB].poll_seconds is None, 'woken by the subscription, not by polling'


@pytest.mark.parametrize('resume', ['header', 'query', 'both'])
async def test_a_stream_resumes_after_last_event_id_with_nothing_missed_or_twice(
    resume: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    for n in range(5):
        await _append(client, 'resume', f'm{n + 1}')
    headers = {'Last-Event-ID': '2'} if resume in ('header', 'both') else {}
    query = '?after=4' if resume == 'both' else '?after=2' if resume == 'query' else ''  # the header wins
    async with client.get(f'{API}/sessions/resume/events{query}', headers=headers) as response:
        assert response.status == 200
        stream = events(response.content)
        assert [(await anext(stream)).id for _ in range(3)] == ['3', '4', '5']
        await _append(client, 'resume', 'm6')
        assert (await anext(stream)).id == '6'


async def test_a_stream_without_last_event_id_starts_with_the_next_new_message(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    await _append(client, 'next', 'old')
    async with client.get(f'{API}/sessions/next/events') as response:
        stream = events(response.content)
        await _listening(client)
        await _append(client, 'next', 'new')
        event = await anext(stream)
        assert (event.id, orjson.loads(event.data)['content']) == ('2', 'new')


@pytest.mark.parametrize('kind', LOCAL_AND_REDIS)
async def test_a_stream_sends_message_deleted_and_truncated_in_write_order(
    kind: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    reader = await _app(aiohttp_client, kind, request)
    writer = reader if kind == 'in_memory' else await _app(aiohttp_client, kind, request)
    await _append(writer, 'order', 'one')
    async with reader.get(f'{API}/sessions/order/events') as response:
        stream = events(response.content)
        await _listening(reader)
        for content in ('two', 'three'):
            await _append(writer, 'order', content)
        assert (await writer.delete(f'{API}/sessions/order/messages/1')).status == 200
        assert (await writer.delete(f'{API}/sessions/order/messages?after=2')).status == 200
        seen = [await anext(stream) for _ in range(3)]
        if seen[1].kind == 'message':  # message 3 was read before the truncation removed it
            seen.append(await anext(stream))
            assert seen[1].id == '3'
            del seen[1]
        assert seen[0].id == '2'
        assert seen[1:] == [Event('message_deleted', None, b'{"id":1}'), Event('truncated', None, b'{"after":2}')]


async def test_a_stream_sends_a_comment_after_the_keepalive_interval(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request, stream_keepalive_seconds=0.05)
    await _append(client, 'idle', 'one')
    async with client.get(f'{API}/sessions/idle/events') as response:
        assert await asyncio.wait_for(comments(response.content, 3), 20) == 0


async def test_a_stream_on_an_unknown_session_is_a_json_404(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    for headers in ({}, {'Last-Event-ID': '3'}):
        response = await client.get(f'{API}/sessions/nobody/events', headers=headers)
        assert response.status == 404
        assert response.content_type == 'application/json'
        assert (await response.json())['error']['code'] == 'session_not_found'
    assert client.app[HUB].open_streams == 0


@pytest.mark.parametrize(
    ('query', 'headers', 'name'),
    [
        ('?after=-1', {}, 'after'),
        ('?after=x', {}, 'after'),
        ('?after=9007199254740992', {}, 'after'),
        ('', {'Last-Event-ID': 'abc'}, 'Last-Event-ID'),
        ('', {'Last-Event-ID': '-3'}, 'Last-Event-ID'),
        ('', {'Last-Event-ID': '9007199254740992'}, 'Last-Event-ID'),
        ('?after=1', {'Last-Event-ID': '1.5'}, 'Last-Event-ID'),
    ],
)
async def test_bad_last_event_id_and_after_are_400(
    query: str, headers: dict[str, str], name: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request)
    await _append(client, 'bad', 'one')
    response = await client.get(f'{API}/sessions/bad/events{query}', headers=headers)
    assert response.status == 400
    assert name in (await response.json())['error']['message']


async def test_streams_past_max_streams_are_503(request: pytest.FixtureRequest, aiohttp_client: AiohttpClient) -> None:
    client = await _app(aiohttp_client, 'in_memory', request, max_streams=2)
    await _append(client, 'full', 'one')
    async with client.get(f'{API}/sessions/full/events') as one, client.get(f'{API}/sessions/full/events') as two:
        assert (one.status, two.status) == (200, 200)
        refused = await client.get(f'{API}/sessions/full/events')
        assert refused.status == 503
        assert refused.content_type == 'application/json'
        assert (await refused.json())['error']['code'] == 'too_many_streams'
    # the two closed: room again (once the server has seen them go)
    await eventually(_no_streams(client), 'the closed streams are counted out')
    async with client.get(f'{API}/sessions/full/events') as again:
        assert again.status == 200


def _no_streams(client: Client) -> Any:
    async def check() -> bool:
        metrics = await (await client.get('/metrics')).text()
        return samples(metrics, 'memsvc_open_streams').get((), None) == 0.0

    return check


async def test_a_stream_whose_client_vanished_is_cleaned_up(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    client = await _app(aiohttp_client, 'in_memory', request, stream_keepalive_seconds=0.05)
    await _append(client, 'gone', 'one')
    response = await client.get(f'{API}/sessions/gone/events')
    assert response.status == 200
    metrics = await (await client.get('/metrics')).text()
    assert samples(metrics, 'memsvc_open_streams')[()] == 1.0
    response.connection.transport.abort()  # type: ignore[union-attr]  # the client vanishes, no goodbye
    response.close()
    await eventually(_no_streams(client), 'the stream of a vanished client is cleaned up')
    assert client.app[HUB].listening() == 0


async def _store_reads(client: Client, operation: str) -> float:
    metrics = await (await client.get('/metrics')).text()
    counts = samples(metrics, 'memsvc_store_operation_duration_seconds_count')
    return counts.get((('operation', operation),), 0.0)


async def test_the_requests_one_write_wakes_share_one_store_read(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    """20 streams and 5 long-polls of one session, all after the same id: one append wakes them all; the streams
    read the store for it once, the long-polls once (`memsvc.shared_reads`), and every one of them gets it."""
    client = await _app(aiohttp_client, 'in_memory', request)
    first = await _append(client, 'fan', 'one')
    streams = []
    for _ in range(20):  # one by one: each stream's own first read is done when its headers come
        response = await client.get(f'{API}/sessions/fan/events')
        assert response.status == 200
        streams.append(response)
    polls = []
    for n in range(5):  # one by one too: each long-poll's first read ([]) is its own
        polls.append(asyncio.ensure_future(client.get(f'{API}/sessions/fan/messages?after={first["id"]}&wait=60')))

        async def waiting(count: float = n + 1.0) -> bool:
            return await _store_reads(client, 'get_messages') == count

        await eventually(waiting, 'the long-poll read once and waits')
    before = await _store_reads(client, 'get_counted_messages')
    second = await _append(client, 'fan', 'two')
    for response in streams:
        event = await asyncio.wait_for(anext(events(response.content)), 20)
        assert (event.kind, event.id) == ('message', str(second['id']))
        response.close()
    for poll in polls:
        assert await (await asyncio.wait_for(poll, 20)).json() == [second]
    assert await _store_reads(client, 'get_counted_messages') == before + 1, 'the streams shared one read'
    assert await _store_reads(client, 'get_messages') == 5 + 1, 'the long-polls shared one read'
