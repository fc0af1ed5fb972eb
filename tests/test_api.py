"""The HTTP contract, route by route, on every store. Every reply is checked against the OpenAPI document."""

import asyncio
import re

import pytest

from tests.conformance import CheckedClient
from tests.conftest import STORE_KINDS
from tests.helpers import API

RFC3339_Z = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$')
JSON = {'Content-Type': 'application/json'}


async def add(client: CheckedClient, session_id: str, *texts: str, role: str = 'user') -> list[int]:
    reply = await client.post(
        f'{API}/sessions/{session_id}/messages', json=[{'role': role, 'content': t} for t in texts]
    )
    assert reply.status == 201, reply.body
    return [m['id'] for m in reply.json()]


# --- sessions --------------------------------------------------------------------------------


async def test_create_session_with_metadata(client: CheckedClient) -> None:
    reply = await client.post(f'{API}/sessions', json={'metadata': {'user_id': '123', 'source': 'web'}})
    assert reply.status == 201
    session = reply.json()
    assert set(session) == {'id', 'created_at', 'updated_at', 'messages', 'metadata'}
    assert re.fullmatch(r'[0-9a-f-]{36}', session['id'])
    assert session['metadata'] == {'user_id': '123', 'source': 'web'}
    assert session['messages'] == []
    assert RFC3339_Z.match(session['created_at'])
    assert session['created_at'] == session['updated_at']
    assert reply.headers['Location'] == f'{API}/sessions/{session["id"]}'
    again = await client.get(reply.headers['Location'])
    assert again.json() == session


@pytest.mark.parametrize('headers', [{}, JSON])
async def test_create_session_with_empty_body(client: CheckedClient, headers: dict[str, str]) -> None:
    reply = await client.post(f'{API}/sessions', headers=headers)
    assert reply.status == 201
    assert reply.json()['metadata'] == {}


async def test_create_session_with_chosen_id_then_conflict(client: CheckedClient) -> None:
    reply = await client.post(f'{API}/sessions', json={'id': 'chat:42', 'metadata': {'v': 1}})
    assert reply.status == 201
    assert reply.json()['id'] == 'chat:42'
    clash = await client.post(f'{API}/sessions', json={'id': 'chat:42', 'metadata': {'v': 2}})
    assert clash.status == 409
    assert clash.error_code == 'session_exists'
    assert (await client.get(f'{API}/sessions/chat:42')).json()['metadata'] == {'v': 1}


async def test_get_session_returns_messages(client: CheckedClient) -> None:
    await add(client, 's1', 'Hallo!')
    await add(client, 's1', 'Hallo! Wie kann ich dir helfen?', role='assistant')
    session = (await client.get(f'{API}/sessions/s1')).json()
    assert [(m['role'], m['content']) for m in session['messages']] == [
        ('user', 'Hallo!'),
        ('assistant', 'Hallo! Wie kann ich dir helfen?'),
    ]
    assert session['updated_at'] >= session['created_at']


async def test_unknown_session_is_404_on_get_patch_delete_and_messages(client: CheckedClient) -> None:
    for method, path in [
        ('GET', f'{API}/sessions/ghost'),
        ('DELETE', f'{API}/sessions/ghost'),
        ('GET', f'{API}/sessions/ghost/messages'),
        ('DELETE', f'{API}/sessions/ghost/messages'),
    ]:
        reply = await client.request(method, path)
        assert reply.status == 404, (method, path)
        assert reply.error_code == 'session_not_found'
        assert 'ghost' in reply.json()['error']['message']
    patched = await client.patch(f'{API}/sessions/ghost', json={'metadata': {'a': 1}})
    assert patched.status == 404


async def test_delete_session(client: CheckedClient) -> None:
    await add(client, 'gone', 'x')
    reply = await client.delete(f'{API}/sessions/gone')
    assert reply.status == 200
    assert reply.json() == {'success': True}
    assert (await client.get(f'{API}/sessions/gone')).status == 404
    assert (await client.delete(f'{API}/sessions/gone')).status == 404


async def test_patch_merges_metadata_as_json_merge_patch(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions', json={'id': 'p', 'metadata': {'a': 1, 'b': {'x': 1, 'y': 2}, 'c': 3}})
    await add(client, 'p', 'kept')
    reply = await client.patch(f'{API}/sessions/p', json={'metadata': {'a': None, 'b': {'y': None, 'z': 3}, 'd': [1]}})
    assert reply.status == 200
    session = reply.json()
    assert session['metadata'] == {'b': {'x': 1, 'z': 3}, 'c': 3, 'd': [1]}
    assert [m['content'] for m in session['messages']] == ['kept']
    assert session['updated_at'] > session['created_at']
    assert (await client.get(f'{API}/sessions/p')).json()['metadata'] == session['metadata']


async def test_concurrent_patches_of_different_keys_all_land(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions', json={'id': 'race'})
    replies = await asyncio.gather(
        *(client.patch(f'{API}/sessions/race', json={'metadata': {f'k{n}': n}}) for n in range(20))
    )
    assert {r.status for r in replies} == {200}
    assert (await client.get(f'{API}/sessions/race')).json()['metadata'] == {f'k{n}': n for n in range(20)}


async def test_patch_that_would_exceed_key_limit_is_422_and_changes_nothing(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions', json={'id': 'full', 'metadata': {f'k{n}': n for n in range(64)}})
    reply = await client.patch(f'{API}/sessions/full', json={'metadata': {'one_more': 1}})
    assert reply.status == 422
    assert reply.json()['error']['message'].startswith('metadata:')
    assert len((await client.get(f'{API}/sessions/full')).json()['metadata']) == 64


# --- listing ---------------------------------------------------------------------------------


async def test_list_sessions_newest_updated_first(client: CheckedClient) -> None:
    for session_id in ['a', 'b', 'c']:
        await add(client, session_id, 'x')
    await add(client, 'a', 'bumped')
    reply = await client.get(f'{API}/sessions')
    assert reply.status == 200
    sessions = reply.json()
    assert [s['id'] for s in sessions] == ['a', 'c', 'b']
    assert [m['content'] for m in sessions[0]['messages']] == ['x', 'bumped']
    assert 'Link' not in reply.headers


async def test_list_sessions_pages_with_link_header(client: CheckedClient) -> None:
    for n in range(5):
        await add(client, f's{n}', 'x')
    seen: list[str] = []
    url: str | None = f'{API}/sessions?limit=2&include_messages=false'
    pages = 0
    while url is not None:
        reply = await client.get(url)
        pages += 1
        page = reply.json()
        assert all(s['messages'] == [] for s in page)
        seen += [s['id'] for s in page]
        link = reply.headers.get('Link')
        if link is None:
            url = None
        else:
            match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert match is not None, link
            url = match.group(1)
            assert 'limit=2' in url
            assert 'include_messages=false' in url
    assert seen == ['s4', 's3', 's2', 's1', 's0']
    assert pages == 3


async def test_list_sessions_with_message_counts(client: CheckedClient) -> None:
    """`include_message_count=true` counts what each session stores now: after a deletion and a truncation, and
    0 for one without messages; without it there is no count (the console's sessions view asks for it)."""
    assert (await client.post(f'{API}/sessions', json={'id': 'empty'})).status == 201
    ids = await add(client, 'edited', 'a', 'b', 'c', 'd')
    assert (await client.delete(f'{API}/sessions/edited/messages/{ids[0]}')).status == 200
    assert (await client.delete(f'{API}/sessions/edited/messages?after={ids[2]}')).status == 200
    await add(client, 'three', 'a', 'b', 'c')
    reply = await client.get(f'{API}/sessions?include_messages=false&include_message_count=true')
    assert {s['id']: s['message_count'] for s in reply.json()} == {'empty': 0, 'edited': 2, 'three': 3}
    assert all(s['messages'] == [] for s in reply.json())
    plain = await client.get(f'{API}/sessions?include_messages=false')
    assert all('message_count' not in s for s in plain.json())


async def test_get_session_without_its_messages(client: CheckedClient) -> None:
    await add(client, 'big', 'a', 'b')
    reply = await client.get(f'{API}/sessions/big?include_messages=false')
    assert reply.status == 200
    assert reply.json()['messages'] == []
    assert reply.json()['metadata'] == {}
    assert reply.headers['ETag'] == (await client.get(f'{API}/sessions/big')).headers['ETag']


async def test_list_sessions_empty(client: CheckedClient) -> None:
    reply = await client.get(f'{API}/sessions')
    assert reply.status == 200
    assert reply.json() == []


@pytest.mark.parametrize(
    'query',
    ['limit=0', 'limit=1001', 'limit=abc', 'limit=-1', 'limit=1&limit=2', 'include_messages=maybe', 'cursor=garbage'],
)
async def test_list_sessions_bad_query_is_400_naming_the_parameter(client: CheckedClient, query: str) -> None:
    reply = await client.get(f'{API}/sessions?{query}')
    assert reply.status == 400
    assert reply.error_code == 'invalid_parameter'
    assert reply.json()['error']['message'].startswith(query.split('=')[0])


async def test_bad_limit_message_names_the_range(client: CheckedClient) -> None:
    reply = await client.get(f'{API}/sessions?limit=100000000')
    assert reply.json()['error']['message'] == 'limit: must be an integer from 1 to 1000'


# --- messages --------------------------------------------------------------------------------


async def test_add_message_creates_session_and_returns_it(client: CheckedClient) -> None:
    reply = await client.post(f'{API}/sessions/fresh/messages', json={'role': 'user', 'content': 'Wie geht es dir?'})
    assert reply.status == 201
    message = reply.json()
    assert set(message) == {'id', 'role', 'content', 'timestamp'}, 'fields not sent are left out'
    assert message['role'] == 'user'
    assert message['content'] == 'Wie geht es dir?'
    assert RFC3339_Z.match(message['timestamp'])
    assert (await client.get(f'{API}/sessions/fresh')).json()['messages'] == [message]


async def test_add_message_keeps_openai_fields(client: CheckedClient) -> None:
    sent = {
        'role': 'assistant',
        'content': '',
        'name': 'planner',
        'tool_calls': [{'id': 'call_1', 'type': 'function', 'function': {'name': 'lookup', 'arguments': '{"q":1}'}}],
        'metadata': {'model': 'gpt-x', 'tokens': 12},
    }
    stored = (await client.post(f'{API}/sessions/t/messages', json=sent)).json()
    tool = (
        await client.post(
            f'{API}/sessions/t/messages', json={'role': 'tool', 'content': '42', 'tool_call_id': 'call_1'}
        )
    ).json()
    assert {k: stored[k] for k in sent} == sent
    assert tool['tool_call_id'] == 'call_1'
    assert (await client.get(f'{API}/sessions/t/messages')).json() == [stored, tool]


async def test_batch_append_is_returned_as_array_with_ordered_ids(client: CheckedClient) -> None:
    reply = await client.post(
        f'{API}/sessions/b/messages',
        json=[{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}],
    )
    assert reply.status == 201
    pair = reply.json()
    assert [m['role'] for m in pair] == ['user', 'assistant']
    assert pair[1]['id'] > pair[0]['id']
    assert (await client.get(f'{API}/sessions/b/messages')).json() == pair


async def test_batch_with_one_bad_message_stores_none_of_them(client: CheckedClient) -> None:
    await add(client, 'b', 'before')
    reply = await client.post(
        f'{API}/sessions/b/messages', json=[{'role': 'user', 'content': 'ok'}, {'role': 'wizard', 'content': 'no'}]
    )
    assert reply.status == 422
    assert reply.json()['error']['message'].startswith('[1].role')
    assert [m['content'] for m in (await client.get(f'{API}/sessions/b/messages')).json()] == ['before']


@pytest.mark.parametrize(
    ('body', 'field'),
    [
        ([], 'body'),
        ([{'role': 'user', 'content': 'x'}] * 101, 'body'),
        ({'role': 'user'}, 'content'),
        ({'role': 'robot', 'content': 'x'}, 'role'),
        ({'role': 'user', 'content': 5}, 'content'),
        ({'role': 'user', 'content': 'x', 'colour': 'red'}, 'colour'),
        ({'role': 'user', 'content': 'x' * 100_001}, 'content'),
        ({'role': 'user', 'content': 'x', 'metadata': {f'k{n}': n for n in range(65)}}, 'metadata'),
        ({'role': 'user', 'content': 'x', 'metadata': {'big': 'x' * 17_000}}, 'metadata'),
        ({'role': 'user', 'content': 'x', 'tool_calls': ['not an object']}, 'tool_calls[0]'),
        ('just a string', 'body'),
    ],
)
async def test_invalid_message_is_422_naming_the_field(client: CheckedClient, body: object, field: str) -> None:
    reply = await client.post(f'{API}/sessions/v/messages', json=body)
    assert reply.status == 422, reply.body
    assert reply.error_code == 'validation_error'
    assert reply.json()['error']['message'].startswith(field)
    assert (await client.get(f'{API}/sessions/v')).status == 404, 'nothing was created'


async def test_get_messages_limit_is_the_last_n_oldest_first(client: CheckedClient) -> None:
    await add(client, 'h', *[f'm{n}' for n in range(1, 31)])
    last = (await client.get(f'{API}/sessions/h/messages?limit=20')).json()
    assert [m['content'] for m in last] == [f'm{n}' for n in range(11, 31)]
    assert len((await client.get(f'{API}/sessions/h/messages')).json()) == 30


async def test_get_messages_pages_with_before_and_after(client: CheckedClient) -> None:
    ids = await add(client, 'h', *[f'm{n}' for n in range(10)])
    older = (await client.get(f'{API}/sessions/h/messages?limit=3&before={ids[5]}')).json()
    assert [m['id'] for m in older] == ids[2:5]
    newer = (await client.get(f'{API}/sessions/h/messages?limit=3&after={ids[5]}')).json()
    assert [m['id'] for m in newer] == ids[6:9]
    between = (await client.get(f'{API}/sessions/h/messages?after={ids[1]}&before={ids[4]}')).json()
    assert [m['id'] for m in between] == ids[2:4]


@pytest.mark.parametrize('query', ['limit=0', 'limit=10001', 'limit=abc', 'before=-1', 'after=x', 'after=1e3'])
async def test_get_messages_bad_query_is_400(client: CheckedClient, query: str) -> None:
    await add(client, 'h', 'x')
    reply = await client.get(f'{API}/sessions/h/messages?{query}')
    assert reply.status == 400
    assert reply.json()['error']['message'].startswith(query.split('=')[0] + ':')


async def test_clear_messages_keeps_session_and_metadata(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions', json={'id': 'c', 'metadata': {'keep': True}})
    await add(client, 'c', 'a', 'b')
    reply = await client.delete(f'{API}/sessions/c/messages')
    assert reply.status == 200
    assert reply.json() == {'success': True}
    session = (await client.get(f'{API}/sessions/c')).json()
    assert session['messages'] == []
    assert session['metadata'] == {'keep': True}


# --- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize('store_kind', [kind for kind in STORE_KINDS if not kind.startswith('chroma')])
async def test_search_without_chroma_is_501_naming_chroma(client: CheckedClient) -> None:
    """The stores without search; the Chroma store's search has tests of its own (tests/test_chroma_search.py)."""
    await add(client, 's', 'hello')
    for path in [f'{API}/sessions/s/search?q=hello', f'{API}/search?q=hello', f'{API}/search?q=hi&session_id=s']:
        reply = await client.get(path)
        assert reply.status == 501
        assert reply.error_code == 'not_supported'
        assert 'Chroma' in reply.json()['error']['message']


@pytest.mark.parametrize('query', ['', 'q=', 'q=x&limit=0', 'q=x&limit=51', 'q=x&role=robot', 'q=x&session_id=a/b'])
async def test_search_bad_query_is_400(client: CheckedClient, query: str) -> None:
    reply = await client.get(f'{API}/search?{query}')
    assert reply.status == 400
    assert reply.error_code in ('invalid_parameter', 'invalid_session_id')
