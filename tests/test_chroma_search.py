"""Semantic search through the API on the Chroma store (embedded and server), and the event loop staying free while
a large batch is embedded and stored."""

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from tests.conformance import CheckedClient
from tests.conftest import make_settings
from tests.helpers import API

CHROMA_KINDS = ['chroma', 'chroma_server']

# Distinct topics; each query shares no content word with its target (checked below), so only meaning can match.
TOPICS = {
    'travel': ('My flight to Tokyo was delayed by three hours at the airport.', 'late plane departure'),
    'baking': ('Mix flour, butter, sugar and two eggs, then bake for forty minutes.', 'how do I make a cake'),
    'pets': ('Our dog keeps barking at the mailman every morning.', 'noisy puppy'),
    'outage': ('The server crashed because its disk ran out of space.', 'computer storage full, system went down'),
    'sport': ('The striker scored twice and the team won the championship.', 'football match goals'),
    'health': ('I have a fever and a sore throat since yesterday.', 'feeling ill, should I see a physician'),
    'money': ('Interest rates rose again, so our mortgage payments will increase.', 'bank loan costs going up'),
    'nature': ('We hiked up the mountain and camped beside a lake.', 'outdoor trekking trip in the wilderness'),
}
STOPWORDS = {'a', 'an', 'the', 'i', 'my', 'our', 'its', 'to', 'at', 'by', 'and', 'so', 'in', 'of', 'do', 'how', 'up'}


def waited_for_cpu() -> float:
    """Seconds this thread has been ready to run but waiting for a CPU (Linux schedstat; 0 where there is none).

    The /healthz probe subtracts it: on a shared two-core machine other processes can keep the event loop's
    thread off the CPU, which says nothing about whether the store blocks the loop (by holding the GIL or by
    working on the loop's thread), and that is what the probe is about."""
    try:
        return int(Path(f'/proc/self/task/{threading.get_native_id()}/schedstat').read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def words(text: str) -> set[str]:
    return {w for w in re.findall(r'[a-z]+', text.lower()) if w not in STOPWORDS}


@pytest.fixture(params=CHROMA_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def add(client: CheckedClient, session_id: str, *messages: tuple[str, str]) -> list[dict[str, Any]]:
    reply = await client.post(
        f'{API}/sessions/{session_id}/messages', json=[{'role': role, 'content': text} for role, text in messages]
    )
    assert reply.status == 201, reply.body
    stored = reply.json()
    assert isinstance(stored, list)
    return stored


def test_queries_share_no_content_word_with_their_targets() -> None:
    for target, query in TOPICS.values():
        assert not words(target) & words(query), (target, query)


async def test_each_query_finds_its_topic_first(client: CheckedClient) -> None:
    stored = {}
    for n, (topic, (text, _)) in enumerate(TOPICS.items()):
        [stored[topic]] = await add(client, f'chat-{n % 3}', ('user', text))
    for topic, (_, query) in TOPICS.items():
        reply = await client.get(f'{API}/search', params={'q': query, 'limit': '3'})
        assert reply.status == 200
        hits = reply.json()
        assert len(hits) == 3
        assert hits[0]['message'] == stored[topic], (query, [h['message']['content'] for h in hits])
        scores = [hit['score'] for hit in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= score <= 1.0 for score in scores)


async def test_session_search_and_role_filter(client: CheckedClient) -> None:
    await add(client, 'a', ('user', TOPICS['pets'][0]), ('assistant', 'Dogs often bark at strangers out of fear.'))
    await add(client, 'b', ('user', 'My puppy howls at night and wakes the neighbours.'))
    in_a = (await client.get(f'{API}/sessions/a/search', params={'q': 'noisy puppy', 'limit': '50'})).json()
    assert {hit['session_id'] for hit in in_a} == {'a'}
    assert len(in_a) == 2
    same = (await client.get(f'{API}/search', params={'q': 'noisy puppy', 'session_id': 'a', 'limit': '50'})).json()
    assert same == in_a
    answers = (await client.get(f'{API}/search', params={'q': 'noisy puppy', 'role': 'assistant'})).json()
    assert [(hit['session_id'], hit['message']['role']) for hit in answers] == [('a', 'assistant')]
    everywhere = (await client.get(f'{API}/search', params={'q': 'noisy puppy'})).json()
    assert everywhere[0]['session_id'] == 'b', 'the closest message is in b'
    assert len(everywhere) == 3


async def test_search_of_an_unknown_session_is_404(client: CheckedClient) -> None:
    await add(client, 'known', ('user', 'hello'))
    for path in [f'{API}/sessions/ghost/search?q=hello', f'{API}/search?q=hello&session_id=ghost']:
        reply = await client.get(path)
        assert reply.status == 404, path
        assert reply.error_code == 'session_not_found'


async def test_search_of_an_empty_store_or_session_is_an_empty_list(client: CheckedClient) -> None:
    assert (await client.get(f'{API}/search?q=anything')).json() == []
    await client.post(f'{API}/sessions', json={'id': 'empty'})
    assert (await client.get(f'{API}/sessions/empty/search?q=anything')).json() == []


async def test_deleted_and_cleared_messages_are_never_found(client: CheckedClient) -> None:
    await add(client, 'gone', ('user', TOPICS['money'][0]))
    await add(client, 'cleared', ('user', TOPICS['health'][0]))
    await add(client, 'kept', ('user', TOPICS['sport'][0]))
    assert (await client.delete(f'{API}/sessions/gone')).status == 200
    assert (await client.delete(f'{API}/sessions/cleared/messages')).status == 200
    hits = (await client.get(f'{API}/search', params={'q': 'bank loan costs going up', 'limit': '50'})).json()
    assert [hit['session_id'] for hit in hits] == ['kept']
    assert (await client.get(f'{API}/sessions/cleared/search?q=feeling+ill')).json() == []
    again = await add(client, 'gone', ('user', 'a new start'))
    assert again[0]['id'] == 1
    hits = (await client.get(f'{API}/sessions/gone/search?q=mortgage+interest&limit=50')).json()
    assert [hit['message']['content'] for hit in hits] == ['a new start'], 'the old session left nothing behind'


async def test_hits_carry_the_stored_message_byte_for_byte(client: CheckedClient) -> None:
    sent = {
        'role': 'assistant',
        'content': 'Grüße 👋 — the weather in Lisbon is sunny',
        'name': 'bot',
        'tool_calls': [{'id': 'c1', 'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}],
        'metadata': {'big': [0] * 6000, 'none': None},
    }
    reply = await client.raw.post(f'{API}/sessions/w/messages', json=sent)
    assert reply.status == 201
    stored = await reply.read()
    async with client.raw.get(f'{API}/search?q=forecast+for+Portugal') as found:
        body = await found.read()
    assert b'"message":' + stored + b',"score":' in body


async def test_healthz_answers_while_a_large_batch_is_embedded(
    store_kind: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    """The loop never blocks: the embedding and server calls run on the store's threads, embedded Chroma in its
    child process. Each probe is one real round trip through the app; the batch takes seconds, so many probes
    overlap it. A store that embedded or wrote the batch on the loop's thread would hold every probe for the
    whole of that work, so no probe may be held for more than a quarter of the batch's time: a bound relative
    to the batch, which a busy machine stretches together with it, not a figure in milliseconds. (The store
    deadline is raised: on two busy cores the batch may take longer than 10 s.)"""
    raw: TestClient[Any, Any] = await aiohttp_client(
        create_app(make_settings(store_kind, request, store_timeout_seconds=120))
    )
    # ~550 characters (~130 tokens) each: long chat messages, and the batch takes seconds on two cores.
    long_text = ' '.join(f'word{n} about topic {n % 17}' for n in range(25))
    batch = [{'role': 'user', 'content': f'{n}: {long_text}'} for n in range(100)]
    await raw.get('/healthz')  # warm the connection pool
    batch_started = time.perf_counter()
    posting = asyncio.create_task(raw.post(f'{API}/sessions/big/messages', json=batch))
    round_trips, delays = [], []
    while not posting.done():
        started, waited = time.perf_counter(), waited_for_cpu()
        async with raw.get('/healthz') as reply:
            assert reply.status == 200
            await reply.read()
        round_trips.append(time.perf_counter() - started)
        delays.append(round_trips[-1] - (waited_for_cpu() - waited))
        await asyncio.sleep(0.005)  # pacing only: a tight loop would pile up the test client's response objects
    reply = await posting
    batch_seconds = time.perf_counter() - batch_started
    assert reply.status == 201
    assert len(await reply.json()) == 100
    assert len(round_trips) >= 20, 'the loop answered other requests many times while the batch was stored'
    slowest, blocked = max(round_trips), max(delays)
    assert blocked < batch_seconds / 4, (
        f'/healthz was held {blocked * 1000:.1f} ms besides waiting for a CPU ({slowest * 1000:.1f} ms in all) '
        f'while the batch took {batch_seconds * 1000:.0f} ms ({len(round_trips)} probes)'
    )
