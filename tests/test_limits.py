"""Limits that protect the store: sessions per tenant and messages per session answer a clear 409
instead of growing without bound; nothing is written past them."""

import pytest
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from tests.conformance import CheckedClient, Conformance
from tests.conftest import make_settings
from tests.helpers import API


async def limited(
    aiohttp_client: AiohttpClient, kind: str, request: pytest.FixtureRequest, **limits: object
) -> CheckedClient:
    settings = make_settings(kind, request, **limits)
    return CheckedClient(await aiohttp_client(create_app(settings)), Conformance.for_settings(settings))


async def test_sessions_per_tenant(
    aiohttp_client: AiohttpClient, store_kind: str, request: pytest.FixtureRequest
) -> None:
    client = await limited(aiohttp_client, store_kind, request, max_sessions_per_tenant=2)
    assert (await client.post(f'{API}/sessions', json={'id': 'a'})).status == 201
    assert (await client.post(f'{API}/sessions/b/messages', json={'role': 'user', 'content': 'x'})).status == 201
    for reply in [
        await client.post(f'{API}/sessions', json={'id': 'c'}),
        await client.post(f'{API}/sessions/c/messages', json={'role': 'user', 'content': 'x'}),
    ]:
        assert reply.status == 409
        assert reply.error_code == 'session_limit_reached'
        assert 'MEMSVC_MAX_SESSIONS_PER_TENANT' in reply.json()['error']['message']
    assert (await client.get(f'{API}/sessions/c')).status == 404
    assert (await client.post(f'{API}/sessions/a/messages', json={'role': 'user', 'content': 'x'})).status == 201, (
        'existing sessions still take messages'
    )
    assert (await client.delete(f'{API}/sessions/a')).status == 200
    assert (await client.post(f'{API}/sessions', json={'id': 'c'})).status == 201, 'a deleted session frees its place'


async def test_a_full_session_refuses_appends_when_asked_to(
    aiohttp_client: AiohttpClient, store_kind: str, request: pytest.FixtureRequest
) -> None:
    client = await limited(aiohttp_client, store_kind, request, max_messages_per_session=3, on_full_session='reject')
    pair = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]
    assert (await client.post(f'{API}/sessions/s/messages', json=pair)).status == 201
    reply = await client.post(f'{API}/sessions/s/messages', json=pair)
    assert reply.status == 409
    assert reply.error_code == 'session_full'
    assert 'limit of 3 messages' in reply.json()['error']['message']
    assert [m['content'] for m in (await client.get(f'{API}/sessions/s/messages')).json()] == ['q', 'a']
    assert (await client.post(f'{API}/sessions/s/messages', json=pair[0])).status == 201, 'one more fits'
    assert (await client.delete(f'{API}/sessions/s/messages')).status == 200
    assert (await client.post(f'{API}/sessions/s/messages', json=pair)).status == 201, 'clearing makes room'
    too_big = await client.post(f'{API}/sessions/new/messages', json=pair * 2)
    assert too_big.status == 409
    assert (await client.get(f'{API}/sessions/new')).status == 404


async def test_by_default_a_full_session_keeps_the_newest(
    aiohttp_client: AiohttpClient, store_kind: str, request: pytest.FixtureRequest
) -> None:
    client = await limited(aiohttp_client, store_kind, request, max_messages_per_session=3)
    for n in range(5):
        assert (
            await client.post(f'{API}/sessions/s/messages', json={'role': 'user', 'content': f'm{n}'})
        ).status == 201
    assert [m['content'] for m in (await client.get(f'{API}/sessions/s/messages')).json()] == ['m2', 'm3', 'm4']
