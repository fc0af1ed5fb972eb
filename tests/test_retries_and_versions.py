"""Idempotent retries (Idempotency-Key) and optimistic concurrency (ETag / If-Match), over HTTP."""

import asyncio

import pytest

from memsvc.settings import Settings
from tests.conformance import CheckedClient
from tests.helpers import API

PAIR = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]


async def contents(client: CheckedClient, session_id: str) -> list[str]:
    return [m['content'] for m in (await client.get(f'{API}/sessions/{session_id}/messages')).json()]


# --- Idempotency-Key -----------------------------------------------------------------------------


async def test_a_retried_append_returns_the_original_answer_and_writes_nothing_again(client: CheckedClient) -> None:
    key = {'Idempotency-Key': 'turn-0001'}
    first = await client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key)
    assert first.status == 201
    retry = await client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key)
    assert retry.status == 201
    assert retry.body == first.body
    assert retry.headers['ETag'] == first.headers['ETag']
    assert await contents(client, 'g') == ['Hi', 'Hello!']


async def test_a_retry_with_other_spacing_of_the_same_body_is_the_same_request(client: CheckedClient) -> None:
    key = {'Idempotency-Key': 'k', 'Content-Type': 'application/json'}
    await client.post(f'{API}/sessions/g/messages', data=b'{"role":"user","content":"x"}', headers=key)
    retry = await client.post(f'{API}/sessions/g/messages', data=b'{ "content": "x",  "role": "user" }', headers=key)
    assert retry.status == 201
    assert await contents(client, 'g') == ['x']


async def test_concurrent_retries_write_once_and_all_get_the_same_answer(client: CheckedClient) -> None:
    key = {'Idempotency-Key': 'storm'}
    replies = await asyncio.gather(
        *(client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key) for _ in range(10))
    )
    assert {reply.status for reply in replies} == {201}
    assert len({reply.body for reply in replies}) == 1
    assert await contents(client, 'g') == ['Hi', 'Hello!']


async def test_the_same_key_with_another_body_is_422(client: CheckedClient) -> None:
    key = {'Idempotency-Key': 'k'}
    await client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key)
    reply = await client.post(f'{API}/sessions/g/messages', json=[PAIR[0]], headers=key)
    assert reply.status == 422
    assert reply.error_code == 'idempotency_key_reused'
    assert await contents(client, 'g') == ['Hi', 'Hello!']


@pytest.mark.parametrize('then', ['DELETE /sessions/g', 'DELETE /sessions/g/messages'])
async def test_a_retry_after_the_write_was_deleted_reports_the_original_outcome_and_writes_nothing(
    client: CheckedClient, settings: Settings, then: str
) -> None:
    """A replay answers what happened to the request, not the present state (as payment APIs do): the client
    retries because it lost that answer, and re-running the write would bring deleted messages back."""
    key = {'Idempotency-Key': 'turn-gone'}
    first = await client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key)
    assert (await client.delete(API + then.split()[1])).status == 200
    retry = await client.post(f'{API}/sessions/g/messages', json=PAIR, headers=key)
    if settings.memory_type == 'chroma':  # no transactions: it cannot tell that the first attempt committed
        assert retry.status == 201
        assert await contents(client, 'g') == ['Hi', 'Hello!']
        return
    assert (retry.status, retry.body, retry.headers['ETag']) == (first.status, first.body, first.headers['ETag'])
    if then.endswith('/messages'):
        assert await contents(client, 'g') == []
    else:
        assert (await client.get(f'{API}/sessions/g')).status == 404


async def test_a_retried_create_after_the_session_was_deleted_reports_the_original_outcome(
    client: CheckedClient, settings: Settings
) -> None:
    key = {'Idempotency-Key': 'create-gone'}
    first = await client.post(f'{API}/sessions', json={'id': 'c'}, headers=key)
    assert (await client.delete(f'{API}/sessions/c')).status == 200
    retry = await client.post(f'{API}/sessions', json={'id': 'c'}, headers=key)
    assert retry.status == first.status
    if settings.memory_type == 'chroma':  # the delete removed the key's record: the create runs again
        assert (await client.get(f'{API}/sessions/c')).status == 200
        return
    assert retry.body == first.body
    assert (await client.get(f'{API}/sessions/c')).status == 404


async def test_without_a_key_a_retry_writes_again(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions/g/messages', json=PAIR[0])
    await client.post(f'{API}/sessions/g/messages', json=PAIR[0])
    assert await contents(client, 'g') == ['Hi', 'Hi']


async def test_a_retried_create_without_an_id_returns_the_same_session(client: CheckedClient) -> None:
    key = {'Idempotency-Key': 'new-chat-17'}
    first = await client.post(f'{API}/sessions', json={'metadata': {'user': 'u1'}}, headers=key)
    assert first.status == 201
    retry = await client.post(f'{API}/sessions', json={'metadata': {'user': 'u1'}}, headers=key)
    assert retry.status == 201
    assert retry.json() == first.json()
    listed = (await client.get(f'{API}/sessions')).json()
    assert [s['id'] for s in listed] == [first.json()['id']], 'one session, not two'
    other = await client.post(f'{API}/sessions', json={'metadata': {'user': 'u2'}}, headers=key)
    assert other.status == 422


@pytest.mark.parametrize('key', ['', 'a' * 256, 'has space', 'tab\there'])
async def test_a_malformed_key_is_400(client: CheckedClient, key: str) -> None:
    reply = await client.post(f'{API}/sessions/g/messages', json=PAIR[0], headers={'Idempotency-Key': key})
    assert reply.status == 400
    assert reply.error_code == 'invalid_header'


# --- ETag and If-Match ---------------------------------------------------------------------------


async def test_every_read_and_write_tells_the_version(client: CheckedClient) -> None:
    created = await client.post(f'{API}/sessions', json={'id': 'e'})
    assert created.headers['ETag'] == '"0"'
    appended = await client.post(f'{API}/sessions/e/messages', json=PAIR)
    assert appended.headers['ETag'] == '"1"'
    assert (await client.get(f'{API}/sessions/e')).headers['ETag'] == '"1"'
    patched = await client.patch(f'{API}/sessions/e', json={'metadata': {'a': 1}})
    assert patched.headers['ETag'] == '"2"'
    cleared = await client.delete(f'{API}/sessions/e/messages')
    assert cleared.headers['ETag'] == '"3"'


async def test_read_modify_write_with_if_match(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions', json={'id': 'e', 'metadata': {'n': 0}})
    read = await client.get(f'{API}/sessions/e')
    etag = read.headers['ETag']
    await client.post(f'{API}/sessions/e/messages', json=PAIR[0])  # someone else writes meanwhile
    stale = await client.patch(f'{API}/sessions/e', json={'metadata': {'n': 1}}, headers={'If-Match': etag})
    assert stale.status == 412
    assert stale.error_code == 'precondition_failed'
    assert (await client.get(f'{API}/sessions/e')).json()['metadata'] == {'n': 0}
    fresh = (await client.get(f'{API}/sessions/e')).headers['ETag']
    ok = await client.patch(f'{API}/sessions/e', json={'metadata': {'n': 1}}, headers={'If-Match': fresh})
    assert ok.status == 200
    assert ok.json()['metadata'] == {'n': 1}


async def test_of_two_writers_with_the_same_etag_exactly_one_wins(client: CheckedClient) -> None:
    await client.post(f'{API}/sessions/e/messages', json=PAIR[0])
    etag = (await client.get(f'{API}/sessions/e')).headers['ETag']
    replies = await asyncio.gather(
        *(
            client.post(
                f'{API}/sessions/e/messages', json={'role': 'user', 'content': f'w{n}'}, headers={'If-Match': etag}
            )
            for n in range(8)
        )
    )
    assert sorted(reply.status for reply in replies) == [201] + [412] * 7
    assert len(await contents(client, 'e')) == 2


@pytest.mark.parametrize(
    ('method', 'path', 'body'),
    [
        ('PATCH', '/sessions/e', {'metadata': {'a': 1}}),
        ('DELETE', '/sessions/e', None),
        ('DELETE', '/sessions/e/messages', None),
        ('POST', '/sessions/e/messages', {'role': 'user', 'content': 'x'}),
    ],
)
async def test_a_stale_if_match_is_412_on_every_write(
    client: CheckedClient, method: str, path: str, body: object
) -> None:
    await client.post(f'{API}/sessions/e/messages', json=PAIR)  # version 1
    reply = await client.request(method, API + path, json=body, headers={'If-Match': '"0"'})
    assert reply.status == 412
    assert 'version "1"' in reply.json()['error']['message']
    assert (await client.get(f'{API}/sessions/e')).headers['ETag'] == '"1"', 'nothing changed'
    current = await client.request(method, API + path, json=body, headers={'If-Match': '"1"'})
    assert current.status in (200, 201)


async def test_if_match_star_means_the_session_must_exist(client: CheckedClient) -> None:
    missing = await client.post(f'{API}/sessions/new/messages', json=PAIR[0], headers={'If-Match': '*'})
    assert missing.status == 412
    assert (await client.get(f'{API}/sessions/new')).status == 404, 'not created'
    await client.post(f'{API}/sessions', json={'id': 'new'})
    assert (await client.post(f'{API}/sessions/new/messages', json=PAIR[0], headers={'If-Match': '*'})).status == 201


@pytest.mark.parametrize('value', ['3', 'W/"3"', '"3", "4"', '"x"', '""'])
async def test_a_malformed_if_match_is_400(client: CheckedClient, value: str) -> None:
    await client.post(f'{API}/sessions', json={'id': 'e'})
    reply = await client.patch(f'{API}/sessions/e', json={'metadata': {}}, headers={'If-Match': value})
    assert reply.status == 400
    assert reply.error_code == 'invalid_header'
