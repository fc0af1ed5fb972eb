"""Tenants: the API key names the tenant, and each tenant sees only its own sessions."""

from pathlib import Path

import pytest
from pydantic import ValidationError
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.auth import Keyring, parse_api_keys
from memsvc.settings import Settings, describe_error
from tests.conformance import CheckedClient, Conformance
from tests.helpers import API

ALICE = {'Authorization': 'Bearer key-of-alice'}
BOB = {'Authorization': 'Bearer key-of-bob'}


@pytest.fixture
async def tenants(aiohttp_client: AiohttpClient, settings: Settings) -> CheckedClient:
    """The store under test with two tenants, alice and bob."""
    configured = Settings(**{**settings.model_dump(), 'api_keys': 'alice=key-of-alice,bob=key-of-bob'})
    return CheckedClient(await aiohttp_client(create_app(configured)), Conformance.for_settings(configured))


async def test_another_tenants_session_is_404_and_never_listed(tenants: CheckedClient) -> None:
    created = await tenants.post(f'{API}/sessions', headers=ALICE, json={'id': 'private', 'metadata': {'owner': 'a'}})
    assert created.status == 201
    await tenants.post(f'{API}/sessions/private/messages', headers=ALICE, json={'role': 'user', 'content': 'secret'})
    for method, path in [
        ('GET', f'{API}/sessions/private'),
        ('GET', f'{API}/sessions/private/messages'),
        ('GET', f'{API}/sessions/private/messages?after=0&wait=1'),
        ('GET', f'{API}/sessions/private/messages/1'),
        ('GET', f'{API}/sessions/private/context'),
        ('GET', f'{API}/sessions/private/summary'),
        ('GET', f'{API}/sessions/private/events'),
        ('DELETE', f'{API}/sessions/private/summary'),
        ('DELETE', f'{API}/sessions/private/messages/1'),
        ('DELETE', f'{API}/sessions/private/messages?after=0'),
        ('DELETE', f'{API}/sessions/private/messages'),
        ('DELETE', f'{API}/sessions/private'),
    ]:
        assert (await tenants.request(method, path, headers=BOB)).status == 404, (method, path)
    summary = {'content': 'stolen', 'through_id': 1}
    assert (await tenants.put(f'{API}/sessions/private/summary', headers=BOB, json=summary)).status == 404
    assert (await tenants.post(f'{API}/sessions/private/fork', headers=BOB, json={'id': 'copy'})).status == 404
    assert (await tenants.get(f'{API}/sessions/copy', headers=BOB)).status == 404
    kept = (await tenants.get(f'{API}/sessions/private/messages', headers=ALICE)).json()
    assert [message['content'] for message in kept] == ['secret']
    assert (await tenants.patch(f'{API}/sessions/private', headers=BOB, json={'metadata': {'x': 1}})).status == 404
    assert (await tenants.get(f'{API}/sessions', headers=BOB)).json() == []
    session = (await tenants.get(f'{API}/sessions/private', headers=ALICE)).json()
    assert session['metadata'] == {'owner': 'a'}
    assert [m['content'] for m in session['messages']] == ['secret']


async def test_the_same_id_in_two_tenants_is_two_sessions(tenants: CheckedClient) -> None:
    await tenants.post(f'{API}/sessions/shared/messages', headers=ALICE, json={'role': 'user', 'content': 'from alice'})
    await tenants.post(f'{API}/sessions/shared/messages', headers=BOB, json={'role': 'user', 'content': 'from bob'})
    assert (await tenants.post(f'{API}/sessions', headers=BOB, json={'id': 'shared'})).status == 409
    alice = (await tenants.get(f'{API}/sessions/shared/messages', headers=ALICE)).json()
    bob = (await tenants.get(f'{API}/sessions/shared/messages', headers=BOB)).json()
    assert [m['content'] for m in alice] == ['from alice']
    assert [m['content'] for m in bob] == ['from bob']
    assert (await tenants.delete(f'{API}/sessions/shared', headers=BOB)).status == 200
    assert (await tenants.get(f'{API}/sessions/shared', headers=ALICE)).status == 200


async def test_unknown_key_is_401(tenants: CheckedClient) -> None:
    reply = await tenants.get(f'{API}/sessions', headers={'Authorization': 'Bearer key-of-carol'})
    assert reply.status == 401


async def test_api_keys_file(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    keys = tmp_path / 'keys'
    keys.write_text('# tenants\nalice=key-of-alice\nbob=key-of-bob  # the second team\n')
    settings = Settings(api_keys_file=keys)
    client = CheckedClient(await aiohttp_client(create_app(settings)), Conformance.for_settings(settings))
    assert (await client.get(f'{API}/sessions', headers=BOB)).status == 200
    assert (await client.get(f'{API}/sessions')).status == 401


@pytest.mark.parametrize(
    ('values', 'problem'),
    [
        ({'api_keys': 'alice'}, 'MEMSVC_API_KEYS: give each tenant as tenant=key'),
        ({'api_keys': 'al/ice=k'}, "MEMSVC_API_KEYS: tenant 'al/ice': use 1-64 characters"),
        ({'api_keys': 'a=k1,a=k2'}, "MEMSVC_API_KEYS: tenant 'a' is given twice"),
        ({'api_keys': 'a=k,b=k'}, "MEMSVC_API_KEYS: tenant 'b' has the same key as another tenant"),
        ({'api_keys': ' , '}, 'MEMSVC_API_KEYS: no tenant=key pair given'),
        ({'api_key': 'k', 'api_keys': 'a=k'}, 'MEMSVC_API_KEYS: set only one of'),
        ({'api_keys_file': '/does/not/exist'}, 'MEMSVC_API_KEYS_FILE: cannot read /does/not/exist'),
    ],
)
def test_bad_key_configuration_names_the_variable(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    assert problem in describe_error(caught.value)


def test_keyring_matches_whole_keys_only() -> None:
    keyring = Keyring(parse_api_keys('alice=abc,bob=abcd'))
    assert keyring.tenant_for(b'Bearer abc') == 'alice'
    assert keyring.tenant_for(b'Bearer abcd') == 'bob'
    assert keyring.tenant_for(b'Bearer ab') is None
    assert keyring.tenant_for(b'abc') is None


async def test_a_person_s_sessions_are_those_of_the_caller_s_tenant(tenants: CheckedClient) -> None:
    person = {'metadata': {'user_id': 'u1'}}
    for session_id in ('a1', 'a2'):
        assert (await tenants.post(f'{API}/sessions', headers=ALICE, json={'id': session_id, **person})).status == 201
    assert (await tenants.post(f'{API}/sessions', headers=BOB, json={'id': 'b1', **person})).status == 201
    mine = await tenants.get(f'{API}/sessions?metadata.user_id=u1', headers=BOB)
    assert [session['id'] for session in mine.json()] == ['b1']
    theirs = await tenants.get(f'{API}/sessions?metadata.user_id=u1', headers=ALICE)
    assert [session['id'] for session in theirs.json()] == ['a2', 'a1']


async def test_an_erasure_never_reaches_another_tenant_s_sessions(tenants: CheckedClient) -> None:
    person = {'metadata': {'user_id': 'u1'}}
    for session_id in ('a1', 'same'):
        assert (await tenants.post(f'{API}/sessions', headers=ALICE, json={'id': session_id, **person})).status == 201
        await tenants.post(
            f'{API}/sessions/{session_id}/messages', headers=ALICE, json={'role': 'user', 'content': 'a'}
        )
    for session_id in ('b1', 'same'):
        assert (await tenants.post(f'{API}/sessions', headers=BOB, json={'id': session_id, **person})).status == 201
    erased = await tenants.delete(f'{API}/sessions?metadata.user_id=u1', headers=BOB)
    assert erased.json() == {'deleted': 2}
    assert (await tenants.get(f'{API}/sessions', headers=BOB)).json() == []
    theirs = await tenants.get(f'{API}/sessions?metadata.user_id=u1', headers=ALICE)
    assert [session['id'] for session in theirs.json()] == ['same', 'a1'], 'the same metadata, the same id: kept'
    for session_id in ('a1', 'same'):
        kept = (await tenants.get(f'{API}/sessions/{session_id}/messages', headers=ALICE)).json()
        assert [message['content'] for message in kept] == ['a']
