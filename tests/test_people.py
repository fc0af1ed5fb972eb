"""A person's sessions through the API (SPEC-2 §3): `metadata.<key>=` filters on the listing. The stores' side is
`test_store_index_contract.py`; tenants are `test_tenants.py`."""

import re

import pytest
from pydantic import ValidationError

from memsvc.openapi import build_openapi
from memsvc.routes import routes
from memsvc.settings import Settings, describe_error
from tests.conformance import CheckedClient
from tests.helpers import API

NDJSON = {'Content-Type': 'application/x-ndjson'}

IN_MEMORY = pytest.mark.parametrize('store_kind', ['in_memory'])


async def create(client: CheckedClient, session_id: str, **metadata: object) -> None:
    assert (await client.post(f'{API}/sessions', json={'id': session_id, 'metadata': metadata})).status == 201


def next_page(link: str | None) -> str | None:
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match is not None, link
    return match.group(1)


@IN_MEMORY
async def test_a_person_s_sessions_are_listed_newest_first_in_pages(client: CheckedClient) -> None:
    for n in range(5):
        await create(client, f's{n}', user_id='u1' if n != 2 else 'u2')
    await client.post(f'{API}/sessions/s1/messages', json={'role': 'user', 'content': 'hi'})
    url: str | None = f'{API}/sessions?metadata.user_id=u1&limit=2'
    pages = []
    while url is not None:
        reply = await client.get(url)
        pages.append([(s['id'], [m['content'] for m in s['messages']]) for s in reply.json()])
        url = next_page(reply.headers.get('Link'))
        assert url is None or 'metadata.user_id=u1' in url
    assert pages == [[('s1', ['hi']), ('s4', [])], [('s3', []), ('s0', [])]]
    reply = await client.get(f'{API}/sessions?metadata.user_id=u1&include_messages=false&limit=1')
    assert reply.json()[0]['messages'] == []
    assert (await client.get(f'{API}/sessions?metadata.user_id=nobody')).json() == []


@IN_MEMORY
@pytest.mark.parametrize(
    ('query', 'message'),
    [
        ('metadata.email=a@b', 'metadata.email: filter on one of metadata.user_id'),
        ('metadata.user_id=a&metadata.user_id=b', 'metadata.user_id: give it at most once'),
    ],
)
async def test_a_filter_on_a_key_that_is_not_indexed_is_400_naming_the_indexed_ones(
    client: CheckedClient, query: str, message: str
) -> None:
    reply = await client.get(f'{API}/sessions?{query}')
    assert reply.status == 400
    assert (reply.error_code, reply.json()['error']['message']) == ('invalid_parameter', message)


def test_the_document_lists_a_filter_per_indexed_key() -> None:
    document = build_openapi(Settings(indexed_metadata='user_id, org'), (routes,))
    names = [p['name'] for p in document['paths'][f'{API}/sessions']['get']['parameters']]
    assert names[-2:] == ['metadata.user_id', 'metadata.org']


@pytest.mark.parametrize('value', ['user id', ',', 'a,a', ','.join('k' * n for n in range(1, 10)), 'k' * 65])
def test_a_bad_list_of_indexed_keys_stops_the_start(value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(indexed_metadata=value)
    assert describe_error(raised.value).startswith('invalid configuration: MEMSVC_INDEXED_METADATA: ')


@pytest.mark.parametrize('store_kind', ['in_memory', 'redis', 'redis_cluster'])
async def test_an_imported_session_is_indexed_by_the_metadata_it_brings(client: CheckedClient) -> None:
    await create(client, 's', user_id='u1')
    async with client.raw.get(f'{API}/export') as reply:
        line = await reply.read()
    assert (await client.delete(f'{API}/sessions/s')).status == 200
    moved = line.replace(b'"user_id":"u1"', b'"user_id":"u2"')
    for data, params in ((line, {}), (moved, {'on_conflict': 'replace'})):
        async with client.raw.post(f'{API}/import', data=data, params=params, headers=NDJSON) as reply:
            assert (await reply.json())['imported'] == 1
        listed = {user: [s['id'] for s in (await client.get(f'{API}/sessions?metadata.user_id={user}')).json()]
                  for user in ('u1', 'u2')}  # fmt: skip
        assert listed == ({'u1': ['s'], 'u2': []} if data is line else {'u1': [], 'u2': ['s']})
