"""The storage contract every store keeps. Runs once per store kind (see conftest.STORE_KINDS)."""

import asyncio
from datetime import timedelta

import orjson
import pytest

from memsvc.errors import InvalidInput
from memsvc.models import NewMessage, SessionRecord, encode_message, to_micros, utc_now
from memsvc.stores import MessageRange, Store

T = 'default'


def record(session_id: str, metadata: bytes = b'{}') -> SessionRecord:
    now = utc_now()
    return SessionRecord(id=session_id, created_at=now, updated_at=now, metadata=metadata, version=0)


def body(content: str, role: str = 'user') -> bytes:
    return encode_message(NewMessage.model_validate({'role': role, 'content': content}), utc_now())


def contents(messages: list[bytes] | None) -> list[str]:
    assert messages is not None
    return [orjson.loads(m)['content'] for m in messages]


def ids(messages: list[bytes] | None) -> list[int]:
    assert messages is not None
    return [orjson.loads(m)['id'] for m in messages]


async def append(store: Store, session_id: str, *texts: str) -> list[bytes]:
    return await store.append_messages(T, session_id, [body(t) for t in texts], utc_now())


async def test_create_then_get(store: Store) -> None:
    assert await store.create_session(T, record('s1', b'{"user":"u1"}'))
    found = await store.get_session(T, 's1', with_messages=True)
    assert found is not None
    assert found.record.id == 's1'
    assert orjson.loads(found.record.metadata) == {'user': 'u1'}
    assert found.messages == []


async def test_create_existing_id_changes_nothing(store: Store) -> None:
    assert await store.create_session(T, record('s1', b'{"a":1}'))
    await append(store, 's1', 'kept')
    assert not await store.create_session(T, record('s1', b'{"b":2}'))
    found = await store.get_session(T, 's1', with_messages=True)
    assert found is not None
    assert orjson.loads(found.record.metadata) == {'a': 1}
    assert contents(found.messages) == ['kept']


async def test_concurrent_creates_of_one_id_admit_exactly_one(store: Store) -> None:
    results = await asyncio.gather(*(store.create_session(T, record('race')) for _ in range(20)))
    assert results.count(True) == 1


async def test_unknown_session_is_absent_everywhere(store: Store) -> None:
    assert await store.get_session(T, 'nope', with_messages=True) is None
    assert await store.get_messages(T, 'nope', MessageRange()) is None
    assert await store.update_metadata(T, 'nope', lambda m: m, utc_now()) is None
    assert not await store.delete_session(T, 'nope')
    assert not await store.clear_messages(T, 'nope', utc_now())


async def test_append_creates_missing_session_and_assigns_ordered_ids(store: Store) -> None:
    stored = await append(store, 'new', 'a', 'b')
    assert ids(stored) == [1, 2]
    assert contents(stored) == ['a', 'b']
    more = await append(store, 'new', 'c')
    assert ids(more) == [3]
    found = await store.get_session(T, 'new', with_messages=True)
    assert found is not None
    assert orjson.loads(found.record.metadata) == {}
    assert contents(found.messages) == ['a', 'b', 'c']
    assert found.messages == stored + more


async def test_append_bumps_updated_at_and_version(store: Store) -> None:
    await store.create_session(T, record('s'))
    before = await store.get_session(T, 's', with_messages=False)
    later = utc_now() + timedelta(seconds=5)
    await store.append_messages(T, 's', [body('x')], later)
    after = await store.get_session(T, 's', with_messages=False)
    assert before is not None
    assert after is not None
    assert after.record.updated_at == later
    assert after.record.created_at == before.record.created_at
    assert after.record.version > before.record.version


async def test_concurrent_appends_lose_nothing_and_keep_each_writers_order(store: Store) -> None:
    async def writer(name: str) -> None:
        for n in range(25):
            await append(store, 'busy', f'{name}-{n}')

    await asyncio.gather(*(writer(f'w{w}') for w in range(8)))
    messages = await store.get_messages(T, 'busy', MessageRange())
    assert ids(messages) == list(range(1, 201))
    texts = contents(messages)
    for w in range(8):
        assert [t for t in texts if t.startswith(f'w{w}-')] == [f'w{w}-{n}' for n in range(25)]


async def test_get_messages_limit_before_after(store: Store) -> None:
    await append(store, 's', *[f'm{n}' for n in range(1, 11)])
    assert ids(await store.get_messages(T, 's', MessageRange(limit=3))) == [8, 9, 10]
    assert ids(await store.get_messages(T, 's', MessageRange(limit=3, before=5))) == [2, 3, 4]
    assert ids(await store.get_messages(T, 's', MessageRange(limit=3, after=5))) == [6, 7, 8]
    assert ids(await store.get_messages(T, 's', MessageRange(after=8))) == [9, 10]
    assert ids(await store.get_messages(T, 's', MessageRange(before=3))) == [1, 2]
    assert ids(await store.get_messages(T, 's', MessageRange(after=2, before=6))) == [3, 4, 5]
    assert ids(await store.get_messages(T, 's', MessageRange(limit=100))) == list(range(1, 11))
    assert await store.get_messages(T, 's', MessageRange(after=10)) == []
    assert await store.get_messages(T, 's', MessageRange(before=1)) == []
    assert await store.get_messages(T, 's', MessageRange(after=7, before=8)) == []
    assert await store.get_messages(T, 's', MessageRange(after=9, before=3)) == []
    assert ids(await store.get_messages(T, 's', MessageRange(before=10**12))) == list(range(1, 11))


async def test_clear_keeps_session_and_metadata_and_never_reuses_ids(store: Store) -> None:
    await store.create_session(T, record('s', b'{"k":"v"}'))
    await append(store, 's', 'a', 'b')
    assert await store.clear_messages(T, 's', utc_now())
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert found.messages == []
    assert orjson.loads(found.record.metadata) == {'k': 'v'}
    assert ids(await append(store, 's', 'c')) == [3]
    assert ids(await store.get_messages(T, 's', MessageRange(after=1))) == [3]


async def test_delete_removes_session_and_messages(store: Store) -> None:
    await append(store, 's', 'a')
    assert await store.delete_session(T, 's')
    assert await store.get_session(T, 's', with_messages=True) is None
    assert await store.get_messages(T, 's', MessageRange()) is None
    sessions, _ = await store.list_sessions(T, limit=10, after=None, with_messages=False)
    assert sessions == []
    assert ids(await append(store, 's', 'fresh')) == [1], 'a re-created session starts afresh'


async def test_update_metadata_applies_function_and_bumps_updated_at(store: Store) -> None:
    await store.create_session(T, record('s', b'{"a":1}'))
    later = utc_now() + timedelta(seconds=5)
    updated = await store.update_metadata(T, 's', lambda m: orjson.dumps({**orjson.loads(m), 'b': 2}), later)
    assert updated is not None
    assert orjson.loads(updated.metadata) == {'a': 1, 'b': 2}
    assert updated.updated_at == later
    found = await store.get_session(T, 's', with_messages=False)
    assert found is not None
    assert found.record == updated


async def test_update_metadata_that_raises_changes_nothing(store: Store) -> None:
    await store.create_session(T, record('s', b'{"a":1}'))

    def refuse(current: bytes) -> bytes:
        raise InvalidInput('metadata', 'too big')

    with pytest.raises(InvalidInput):
        await store.update_metadata(T, 's', refuse, utc_now())
    found = await store.get_session(T, 's', with_messages=False)
    assert found is not None
    assert orjson.loads(found.record.metadata) == {'a': 1}


async def test_concurrent_metadata_updates_of_different_keys_all_land(store: Store) -> None:
    await store.create_session(T, record('s'))

    def setter(key: str) -> object:
        return lambda m: orjson.dumps({**orjson.loads(m), key: True})

    await asyncio.gather(*(store.update_metadata(T, 's', setter(f'k{n}'), utc_now()) for n in range(20)))  # type: ignore[arg-type]
    found = await store.get_session(T, 's', with_messages=False)
    assert found is not None
    assert orjson.loads(found.record.metadata) == {f'k{n}': True for n in range(20)}


async def test_listing_is_newest_first_and_pages_without_gaps_or_repeats(store: Store) -> None:
    base = utc_now()
    for n in range(7):
        await store.append_messages(T, f's{n}', [body('x')], base + timedelta(seconds=n))
    # two sessions updated in the same microsecond: the id breaks the tie
    await store.append_messages(T, 'tie-a', [body('x')], base + timedelta(seconds=3))
    await store.append_messages(T, 'tie-b', [body('x')], base + timedelta(seconds=3))
    seen: list[str] = []
    after = None
    while True:
        page, more = await store.list_sessions(T, limit=3, after=after, with_messages=False)
        seen += [s.record.id for s in page]
        if not more:
            break
        last = page[-1].record
        after = (to_micros(last.updated_at), last.id)
    assert seen == ['s6', 's5', 's4', 'tie-b', 'tie-a', 's3', 's2', 's1', 's0']


async def test_listing_reflects_updates_and_messages_on_request(store: Store) -> None:
    await append(store, 'old', 'a')
    await append(store, 'new', 'b')
    await store.append_messages(T, 'old', [body('c')], utc_now() + timedelta(seconds=1))
    page, more = await store.list_sessions(T, limit=10, after=None, with_messages=True)
    assert not more
    assert [s.record.id for s in page] == ['old', 'new']
    assert contents(page[0].messages) == ['a', 'c']
    bare, _ = await store.list_sessions(T, limit=10, after=None, with_messages=False)
    assert all(s.messages == [] for s in bare)


async def test_tenants_are_separate_namespaces(store: Store) -> None:
    await append(store, 'same', 'from default')
    await store.append_messages('other', 'same', [body('from other')], utc_now())
    assert contents(await store.get_messages(T, 'same', MessageRange())) == ['from default']
    assert contents(await store.get_messages('other', 'same', MessageRange())) == ['from other']
    assert await store.delete_session('other', 'same')
    assert contents(await store.get_messages(T, 'same', MessageRange())) == ['from default']
    page, _ = await store.list_sessions('other', limit=10, after=None, with_messages=False)
    assert page == []


async def test_stored_bytes_round_trip_exactly(store: Store) -> None:
    message = NewMessage.model_validate(
        {
            'role': 'assistant',
            'content': 'Grüße 👋 "quoted" \\ and \n newline',
            'name': 'bot',
            'tool_calls': [{'id': 'call_1', 'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}],
            'metadata': {'nested': {'list': [1, 2.5, None, True]}},
        }
    )
    [stored] = await store.append_messages(T, 's', [encode_message(message, utc_now())], utc_now())
    [read] = await store.get_messages(T, 's', MessageRange()) or []
    assert read == stored
    decoded = orjson.loads(read)
    assert decoded['content'] == message.content
    assert decoded['tool_calls'] == message.tool_calls
    assert decoded['metadata'] == message.metadata


async def test_ping_answers(store: Store) -> None:
    await store.ping()
