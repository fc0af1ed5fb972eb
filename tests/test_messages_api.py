"""One message at a time and truncating the tail, over HTTP (SPEC-2 §2). Every reply is checked against the OpenAPI
document. The stores' side is tests/test_store_messages_contract.py, on every store; here the routes run on the
fast stores, and on every store where the answer is the store's own bytes (a single message, the context window)."""

from typing import Any

import orjson
import pytest

from tests.conformance import CheckedClient
from tests.conftest import STORE_KINDS
from tests.helpers import API

FAST_KINDS = [kind for kind in STORE_KINDS if not kind.startswith('chroma')]
fast = pytest.mark.parametrize('store_kind', FAST_KINDS)


async def add(client: CheckedClient, session_id: str, *texts: str) -> list[int]:
    reply = await client.post(
        f'{API}/sessions/{session_id}/messages', json=[{'role': 'user', 'content': t} for t in texts]
    )
    assert reply.status == 201, reply.body
    return [m['id'] for m in reply.json()]


async def listed(client: CheckedClient, session_id: str, **query: Any) -> list[int]:
    reply = await client.get(f'{API}/sessions/{session_id}/messages', params={k: str(v) for k, v in query.items()})
    assert reply.status == 200, reply.body
    return [m['id'] for m in reply.json()]


async def test_a_message_reads_back_byte_for_byte_as_the_list_gives_it(client: CheckedClient) -> None:
    message = {
        'role': 'assistant',
        'content': 'Grüße 👋 "quoted" \\ and \n newline',
        'tool_calls': [{'id': 'c1', 'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}],
        'metadata': {'model': 'x', 'n': [1, 2.5, None]},
    }
    await add(client, 's', 'first')
    assert (await client.post(f'{API}/sessions/s/messages', json=message)).status == 201
    whole = (await client.get(f'{API}/sessions/s/messages')).body
    one = await client.get(f'{API}/sessions/s/messages/2')
    assert one.status == 200
    assert one.headers['Content-Type'].startswith('application/json')
    assert b'[' + (await client.get(f'{API}/sessions/s/messages/1')).body + b',' + one.body + b']' == whole
    assert (await client.delete(f'{API}/sessions/s/messages/1')).status == 200
    assert (await client.get(f'{API}/sessions/s/messages/2')).body == one.body
    assert (await client.get(f'{API}/sessions/s/messages/1')).error_code == 'message_not_found'


@fast
async def test_deleting_a_message_answers_success_and_moves_the_etag(client: CheckedClient) -> None:
    await add(client, 's', 'a', 'b', 'c')
    before = await client.get(f'{API}/sessions/s')
    reply = await client.delete(f'{API}/sessions/s/messages/2')
    assert (reply.status, reply.json()) == (200, {'success': True})
    after = await client.get(f'{API}/sessions/s')
    assert reply.headers['ETag'] == after.headers['ETag'] != before.headers['ETag']
    assert after.json()['updated_at'] >= before.json()['updated_at']
    assert [m['id'] for m in after.json()['messages']] == [1, 3]
    again = await client.delete(f'{API}/sessions/s/messages/2')
    assert (again.status, again.error_code) == (404, 'message_not_found')
    assert (await client.get(f'{API}/sessions/s')).headers['ETag'] == after.headers['ETag']
    assert await add(client, 's', 'd') == [4]


@fast
async def test_unknown_sessions_and_messages_are_404(client: CheckedClient) -> None:
    for method, path in [
        ('GET', f'{API}/sessions/ghost/messages/1'),
        ('DELETE', f'{API}/sessions/ghost/messages/1'),
        ('DELETE', f'{API}/sessions/ghost/messages?after=0'),
    ]:
        reply = await client.request(method, path)
        assert (reply.status, reply.error_code) == (404, 'session_not_found'), (method, path)
    await add(client, 's', 'a')
    for method in ('GET', 'DELETE'):
        reply = await client.request(method, f'{API}/sessions/s/messages/2')
        assert (reply.status, reply.error_code) == (404, 'message_not_found')
        assert 'session' in reply.json()['error']['message']


@fast
@pytest.mark.parametrize('message_id', ['0', '-1', 'abc', '1.5', '1e3', '%20', str(2**53)])
async def test_a_message_id_that_is_not_a_positive_integer_is_400(client: CheckedClient, message_id: str) -> None:
    await add(client, 's', 'a')
    for method in ('GET', 'DELETE'):
        reply = await client.request(method, f'{API}/sessions/s/messages/{message_id}')
        assert (reply.status, reply.error_code) == (400, 'invalid_parameter'), (method, message_id)
        assert reply.json()['error']['message'].startswith('message_id:')


@fast
async def test_truncating_answers_how_many_went_and_ids_continue(client: CheckedClient) -> None:
    await add(client, 's', *[f'm{n}' for n in range(1, 7)])
    await client.put(f'{API}/sessions/s/summary', json={'content': 'all six', 'through_id': 6})
    etag = (await client.get(f'{API}/sessions/s')).headers['ETag']
    reply = await client.delete(f'{API}/sessions/s/messages?after=3')
    assert (reply.status, reply.json()) == (200, {'success': True, 'deleted': 3})
    assert reply.headers['ETag'] != etag
    assert await listed(client, 's') == [1, 2, 3]
    assert (await client.get(f'{API}/sessions/s/summary')).error_code == 'summary_not_found', 'it covered 4 to 6'
    assert await add(client, 's', 'regenerated') == [7]
    assert (await client.delete(f'{API}/sessions/s/messages?after=0')).json() == {'success': True, 'deleted': 4}
    assert await add(client, 's', 'again') == [8]
    cleared = await client.delete(f'{API}/sessions/s/messages')
    assert cleared.json() == {'success': True}, 'without after: the clear of part 1'
    assert await listed(client, 's') == []


@fast
@pytest.mark.parametrize('after', ['-1', 'x', '1.5', '', str(2**53)])
async def test_a_bad_after_is_400_and_removes_nothing(client: CheckedClient, after: str) -> None:
    await add(client, 's', 'a', 'b')
    reply = await client.delete(f'{API}/sessions/s/messages?after={after}')
    assert (reply.status, reply.error_code) == (400, 'invalid_parameter')
    assert await listed(client, 's') == [1, 2]


@fast
async def test_deletes_and_truncations_honour_if_match(client: CheckedClient) -> None:
    await add(client, 's', 'a', 'b', 'c')  # version 1
    for path in (f'{API}/sessions/s/messages/1', f'{API}/sessions/s/messages?after=1'):
        stale = await client.delete(path, headers={'If-Match': '"0"'})
        assert (stale.status, stale.error_code) == (412, 'precondition_failed'), path
    assert await listed(client, 's') == [1, 2, 3]
    reply = await client.delete(f'{API}/sessions/s/messages/1', headers={'If-Match': '"1"'})
    assert (reply.status, reply.headers['ETag']) == (200, '"2"')
    reply = await client.delete(f'{API}/sessions/s/messages?after=2', headers={'If-Match': reply.headers['ETag']})
    assert (reply.status, reply.json(), reply.headers['ETag']) == (200, {'success': True, 'deleted': 1}, '"3"')
    assert await listed(client, 's') == [2]


@fast
async def test_pages_across_gaps_hold_exactly_limit_messages(client: CheckedClient) -> None:
    await add(client, 's', *[f'm{n}' for n in range(1, 31)])
    for gone in range(11, 26):
        assert (await client.delete(f'{API}/sessions/s/messages/{gone}')).status == 200
    assert await listed(client, 's', limit=8) == [8, 9, 10, 26, 27, 28, 29, 30]
    assert await listed(client, 's', limit=3, before=26) == [8, 9, 10]
    assert await listed(client, 's', limit=3, after=10) == [26, 27, 28]


async def test_the_context_window_over_deleted_messages_and_a_truncated_tail(client: CheckedClient) -> None:
    """Ids 1 (system), 2, 5 to 30 and 61 to 70: more than the window's first read, with gaps in the ids, so that the
    window cannot find the oldest message from the newest id and the count."""
    system = {'role': 'system', 'content': 'You are terse.'}
    assert (await client.post(f'{API}/sessions/s/messages', json=system)).status == 201
    await add(client, 's', *[f'message {n}' for n in range(2, 61)])
    assert (await client.delete(f'{API}/sessions/s/messages?after=30')).status == 200
    for gone in (3, 4):
        assert (await client.delete(f'{API}/sessions/s/messages/{gone}')).status == 200
    await add(client, 's', *[f'message {n}' for n in range(61, 71)])
    kept = [1, 2, *range(5, 31), *range(61, 71)]
    assert await listed(client, 's') == kept
    reply = await client.get(f'{API}/sessions/s/context', params={'max_tokens': '383', 'format': 'memsvc'})
    assert reply.status == 200, reply.body
    window = reply.json()
    assert [m['id'] for m in window['messages']] == kept, 'every stored message fits the budget'
    assert (window['dropped'], window['first_id']) == (0, 1)
    tight = (await client.get(f'{API}/sessions/s/context', params={'max_tokens': '120', 'format': 'memsvc'})).json()
    ids = [m['id'] for m in tight['messages']]
    assert ids[0] == 1, 'the system message stays pinned'
    assert ids[1:] == kept[-len(ids) + 1 :]
    assert tight['dropped'] == len(kept) - len(ids)
    assert orjson.loads(orjson.dumps(tight))['tokens'] <= 120
