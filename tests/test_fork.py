"""POST /sessions/{id}/fork on every store: what is copied, `forked_from` on every read, errors, idempotency, tenants.
Every reply is checked against the OpenAPI document."""

from typing import Any

from tests.conformance import CheckedClient
from tests.helpers import API
from tests.test_tenants import ALICE, BOB, tenants

__all__ = ['tenants']  # the fixture


async def add(client: CheckedClient, session_id: str, *texts: str) -> list[dict[str, Any]]:
    reply = await client.post(
        f'{API}/sessions/{session_id}/messages', json=[{'role': 'user', 'content': t} for t in texts]
    )
    assert reply.status == 201, reply.body
    messages: list[dict[str, Any]] = reply.json()
    return messages


async def fork(client: CheckedClient, source: str, body: Any = None, **kwargs: Any) -> Any:
    return await client.post(f'{API}/sessions/{source}/fork', json=body, **kwargs)


async def test_fork_copies_messages_through_id_with_their_ids_and_timestamps(client: CheckedClient) -> None:
    created = await client.post(f'{API}/sessions', json={'id': 'src', 'metadata': {'user_id': 'u1'}})
    assert created.status == 201
    stored = await add(client, 'src', 'one', 'two', 'three', 'four')
    before = await client.get(f'{API}/sessions/src')

    reply = await fork(client, 'src', {'id': 'branch', 'through_id': 3})
    assert reply.status == 201, reply.body
    session = reply.json()
    assert session['id'] == 'branch'
    assert session['messages'] == stored[:3], 'ids, content and timestamps as stored'
    assert session['metadata'] == {'user_id': 'u1'}, "the source's metadata by default"
    assert session['forked_from'] == {'session_id': 'src', 'message_id': 3}
    assert session['created_at'] == session['updated_at'] > before.json()['updated_at']
    assert reply.headers['Location'] == f'{API}/sessions/branch'
    assert reply.headers['ETag'] == '"0"', "the version starts as create's"

    assert (await client.get(f'{API}/sessions/branch')).json() == session
    after = await client.get(f'{API}/sessions/src')
    assert after.json() == before.json(), 'the source is as it was'
    assert after.headers['ETag'] == before.headers['ETag']

    appended = await add(client, 'branch', 'five')
    assert appended[0]['id'] == 4, 'the next id follows through_id'
    patched = await client.patch(f'{API}/sessions/branch', json={'metadata': {'topic': 'x'}})
    assert patched.json()['forked_from'] == session['forked_from']
    listed = {s['id']: s for s in (await client.get(f'{API}/sessions')).json()}
    assert listed['branch']['forked_from'] == session['forked_from']
    assert 'forked_from' not in listed['src']
    assert 'forked_from' not in created.json()
    assert [m['content'] for m in (await client.get(f'{API}/sessions/branch/messages')).json()] == [
        'one',
        'two',
        'three',
        'five',
    ]


async def test_fork_defaults_to_the_last_message_and_a_new_id(client: CheckedClient) -> None:
    stored = await add(client, 'src', 'a', 'b')
    reply = await client.post(f'{API}/sessions/src/fork')  # no body at all
    assert reply.status == 201, reply.body
    session = reply.json()
    assert session['id'] != 'src'
    assert len(session['id']) == 36
    assert session['messages'] == stored
    assert session['forked_from'] == {'session_id': 'src', 'message_id': 2}
    assert session['metadata'] == {}


async def test_fork_with_metadata_and_without_messages_in_the_answer(client: CheckedClient) -> None:
    await add(client, 'src', 'a', 'b')
    reply = await fork(client, 'src', {'id': 'f', 'metadata': {'k': 'v'}}, params={'include_messages': 'false'})
    assert reply.status == 201
    assert reply.json()['messages'] == []
    assert reply.json()['metadata'] == {'k': 'v'}
    assert len((await client.get(f'{API}/sessions/f')).json()['messages']) == 2


async def test_fork_of_an_empty_session(client: CheckedClient) -> None:
    await add(client, 'src', 'a')
    assert (await client.delete(f'{API}/sessions/src/messages')).status == 200
    reply = await fork(client, 'src', {'id': 'f'})
    assert reply.status == 201
    assert reply.json()['messages'] == []
    assert reply.json()['forked_from'] == {'session_id': 'src', 'message_id': None}
    assert (await add(client, 'f', 'first'))[0]['id'] == 1


async def test_fork_errors(client: CheckedClient) -> None:
    missing = await fork(client, 'nope', {'id': 'f'})
    assert (missing.status, missing.error_code) == (404, 'session_not_found')
    await add(client, 'src', 'a', 'b')
    for through in (3, 99):
        unknown = await fork(client, 'src', {'id': 'f', 'through_id': through})
        assert (unknown.status, unknown.error_code) == (404, 'message_not_found'), through
    await client.post(f'{API}/sessions', json={'id': 'taken'})
    taken = await fork(client, 'src', {'id': 'taken'})
    assert (taken.status, taken.error_code) == (409, 'session_exists')
    assert (await client.get(f'{API}/sessions/taken')).json()['messages'] == []
    for body in ({'through_id': 0}, {'extra': 1}, {'id': 'bad id'}, {'metadata': {str(n): n for n in range(300)}}):
        bad = await fork(client, 'src', body)
        assert (bad.status, bad.error_code) == (422, 'validation_error'), body
    malformed = await client.post(f'{API}/sessions/src/fork', data=b'{', headers={'Content-Type': 'application/json'})
    assert malformed.status == 400
    assert (await client.post(f'{API}/sessions/bad%20id/fork')).status == 400
    assert {s['id'] for s in (await client.get(f'{API}/sessions')).json()} == {'src', 'taken'}, 'nothing was made'


async def test_fork_copies_the_summary_only_when_it_covers_no_more_than_the_fork(client: CheckedClient) -> None:
    await add(client, 'src', 'a', 'b', 'c')
    summary = await client.put(f'{API}/sessions/src/summary', json={'content': 'a and b', 'through_id': 2})
    assert summary.status == 200
    assert (await fork(client, 'src', {'id': 'with', 'through_id': 2})).status == 201
    assert (await client.get(f'{API}/sessions/with/summary')).json() == summary.json()
    assert (await fork(client, 'src', {'id': 'without', 'through_id': 1})).status == 201
    none = await client.get(f'{API}/sessions/without/summary')
    assert (none.status, none.error_code) == (404, 'summary_not_found')


async def test_a_retry_with_the_idempotency_key_returns_the_same_fork(client: CheckedClient) -> None:
    await add(client, 'src', 'a', 'b')
    key = {'Idempotency-Key': 'fork-1'}
    first = await fork(client, 'src', {'through_id': 1}, headers=key)
    again = await fork(client, 'src', {'through_id': 1}, headers=key)
    assert first.status == again.status == 201
    assert again.json() == first.json()
    assert len((await client.get(f'{API}/sessions')).json()) == 2, 'one fork, not two'
    chosen = await fork(client, 'src', {'id': 'mine'}, headers={'Idempotency-Key': 'fork-2'})
    assert (await fork(client, 'src', {'id': 'mine'}, headers={'Idempotency-Key': 'fork-2'})).json() == chosen.json()
    other = await fork(client, 'src', {'through_id': 2}, headers=key)
    assert (other.status, other.error_code) == (422, 'idempotency_key_reused')


async def test_forks_stay_in_their_tenant(tenants: CheckedClient) -> None:
    await tenants.post(f'{API}/sessions/private/messages', headers=ALICE, json={'role': 'user', 'content': 'secret'})
    assert (await tenants.post(f'{API}/sessions/private/fork', headers=BOB, json={'id': 'stolen'})).status == 404
    made = await tenants.post(f'{API}/sessions/private/fork', headers=ALICE, json={'id': 'copy'})
    assert made.status == 201
    assert (await tenants.get(f'{API}/sessions/copy', headers=BOB)).status == 404
    assert (await tenants.get(f'{API}/sessions', headers=BOB)).json() == []
    assert (await tenants.post(f'{API}/sessions/copy/fork', headers=BOB, json={'id': 'x'})).status == 404


async def test_a_fork_keeps_the_gaps_of_deleted_messages(client: CheckedClient) -> None:
    await add(client, 'src', 'a', 'b', 'c', 'd', 'e')
    assert (await client.delete(f'{API}/sessions/src/messages/2')).status == 200
    assert (await client.delete(f'{API}/sessions/src/messages', params={'after': 4})).status == 200
    gone = await fork(client, 'src', {'id': 'f', 'through_id': 2})
    assert (gone.status, gone.error_code) == (404, 'message_not_found')
    whole = await fork(client, 'src', {'id': 'whole'})
    assert [m['id'] for m in whole.json()['messages']] == [1, 3, 4]
    assert whole.json()['forked_from'] == {'session_id': 'src', 'message_id': 4}
    made = await fork(client, 'src', {'id': 'f', 'through_id': 3})
    assert [m['id'] for m in made.json()['messages']] == [1, 3]
    assert (await client.get(f'{API}/sessions/f/messages/2')).status == 404
    assert (await client.get(f'{API}/sessions/f/messages/3')).json()['content'] == 'c'
    assert [m['id'] for m in (await client.get(f'{API}/sessions/f/messages', params={'after': 1})).json()] == [3]
    assert (await add(client, 'f', 'next'))[0]['id'] == 4
