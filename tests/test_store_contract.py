"""The storage contract every store keeps. Runs once per store kind (see conftest.STORE_KINDS)."""

import asyncio
from datetime import timedelta

import orjson
import pytest

from memsvc.errors import IdempotencyKeyReused, InvalidInput, PreconditionFailed
from memsvc.models import NewMessage, SessionRecord, encode_message, json_array, to_micros, utc_now
from memsvc.stores import MessageRange, Store
from memsvc.stores.base import ANY_VERSION, Idempotency
from tests.helpers import body, contents, ids, parsed

T = 'default'


def record(session_id: str, metadata: bytes = b'{}') -> SessionRecord:
    now = utc_now()
    return SessionRecord(id=session_id, created_at=now, updated_at=now, metadata=metadata, version=0)


async def append(store: Store, session_id: str, *texts: str) -> list[bytes]:
    return (await store.append_messages(T, session_id, [body(t) for t in texts], utc_now())).messages


async def test_create_then_get(store: Store) -> None:
    assert await store.create_session(T, record('s1', b'{"user":"u1"}'))
    found = await store.get_session(T, 's1', with_messages=True)
    assert found is not None
    assert found.record.id == 's1'
    assert orjson.loads(found.record.metadata) == {'user': 'u1'}
    assert parsed(found.messages) == []


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
    assert sum(result is not None for result in results) == 1


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
    assert found.messages == json_array(stored + more)


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
    assert await store.get_messages(T, 's', MessageRange(after=10)) == b'[]'
    assert await store.get_messages(T, 's', MessageRange(before=1)) == b'[]'
    assert await store.get_messages(T, 's', MessageRange(after=7, before=8)) == b'[]'
    assert await store.get_messages(T, 's', MessageRange(after=9, before=3)) == b'[]'
    assert ids(await store.get_messages(T, 's', MessageRange(before=10**12))) == list(range(1, 11))


async def test_clear_keeps_session_and_metadata_and_never_reuses_ids(store: Store) -> None:
    await store.create_session(T, record('s', b'{"k":"v"}'))
    await append(store, 's', 'a', 'b')
    assert await store.clear_messages(T, 's', utc_now())
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert parsed(found.messages) == []
    assert orjson.loads(found.record.metadata) == {'k': 'v'}
    assert await store.get_messages(T, 's', MessageRange(limit=20)) == b'[]', 'an empty session, not a missing one'
    assert await store.get_messages(T, 's', MessageRange()) == b'[]'
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
    assert all(parsed(s.messages) == [] for s in bare)


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
    message = NewMessage(
        role='assistant',
        content='Grüße 👋 "quoted" \\ and \n newline',
        name='bot',
        tool_calls=[{'id': 'call_1', 'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}],
        metadata={'nested': {'list': [1, 2.5, None, True]}},
    )
    [stored] = (await store.append_messages(T, 's', [encode_message(message, utc_now())], utc_now())).messages
    assert await store.get_messages(T, 's', MessageRange()) == json_array([stored]), 'byte for byte as stored'
    [decoded] = parsed(await store.get_messages(T, 's', MessageRange()))
    assert decoded['content'] == message['content']
    assert decoded['tool_calls'] == message.get('tool_calls')
    assert decoded['metadata'] == message.get('metadata')


async def test_ping_answers(store: Store) -> None:
    await store.ping()


# --- versions and idempotency ------------------------------------------------------------------


def idem(key: str, fingerprint: str = 'f1') -> Idempotency:
    return Idempotency(key=key, fingerprint=fingerprint, ttl_seconds=3600)


async def version_of(store: Store, session_id: str) -> int:
    found = await store.get_session(T, session_id, with_messages=False)
    assert found is not None
    return found.record.version


async def test_every_write_bumps_the_version_and_reports_it(store: Store) -> None:
    created = await store.create_session(T, record('v'))
    assert created is not None
    assert created.version == 0
    appended = await store.append_messages(T, 'v', [body('a')], utc_now())
    assert appended.version == 1 == await version_of(store, 'v')
    updated = await store.update_metadata(T, 'v', lambda m: b'{"k":1}', utc_now())
    assert updated is not None
    assert updated.version == 2 == await version_of(store, 'v')
    assert await store.clear_messages(T, 'v', utc_now()) == 3 == await version_of(store, 'v')


async def test_writes_with_a_stale_version_change_nothing(store: Store) -> None:
    await store.create_session(T, record('v', b'{"a":1}'))
    await append(store, 'v', 'first')  # version 1
    with pytest.raises(PreconditionFailed) as caught:
        await store.append_messages(T, 'v', [body('late')], utc_now(), expected_version=0)
    assert caught.value.current == 1
    with pytest.raises(PreconditionFailed):
        await store.update_metadata(T, 'v', lambda m: b'{"a":2}', utc_now(), expected_version=0)
    with pytest.raises(PreconditionFailed):
        await store.clear_messages(T, 'v', utc_now(), expected_version=0)
    with pytest.raises(PreconditionFailed):
        await store.delete_session(T, 'v', expected_version=0)
    found = await store.get_session(T, 'v', with_messages=True)
    assert found is not None
    assert contents(found.messages) == ['first']
    assert orjson.loads(found.record.metadata) == {'a': 1}
    assert found.record.version == 1


async def test_writes_with_the_current_version_or_any_go_through(store: Store) -> None:
    await append(store, 'v', 'first')
    appended = await store.append_messages(T, 'v', [body('second')], utc_now(), expected_version=1)
    assert appended.version == 2
    updated = await store.update_metadata(T, 'v', lambda m: b'{"a":2}', utc_now(), expected_version=ANY_VERSION)
    assert updated is not None
    assert updated.version == 3
    assert await store.clear_messages(T, 'v', utc_now(), expected_version=3) == 4
    assert await store.delete_session(T, 'v', expected_version=4)


async def test_an_append_with_a_version_never_creates_the_session(store: Store) -> None:
    for expected in (0, ANY_VERSION):
        with pytest.raises(PreconditionFailed) as caught:
            await store.append_messages(T, 'new', [body('x')], utc_now(), expected_version=expected)
        assert caught.value.current is None
    assert await store.get_session(T, 'new', with_messages=False) is None


async def test_unknown_session_is_absent_before_its_version_is_checked(store: Store) -> None:
    assert await store.update_metadata(T, 'nope', lambda m: m, utc_now(), expected_version=3) is None
    assert not await store.delete_session(T, 'nope', expected_version=3)
    assert await store.clear_messages(T, 'nope', utc_now(), expected_version=3) is None


async def test_an_idempotent_append_retried_returns_the_first_answer_and_writes_once(store: Store) -> None:
    first = await store.append_messages(T, 'i', [body('q'), body('a')], utc_now(), idempotency=idem('k1'))
    await append(store, 'i', 'someone else')
    again = await store.append_messages(T, 'i', [body('q'), body('a')], utc_now(), idempotency=idem('k1'))
    assert again == first
    assert contents(await store.get_messages(T, 'i', MessageRange())) == ['q', 'a', 'someone else']


async def test_concurrent_retries_of_one_idempotent_append_write_once(store: Store) -> None:
    answers = await asyncio.gather(
        *(store.append_messages(T, 'i', [body('once')], utc_now(), idempotency=idem('k')) for _ in range(10))
    )
    assert all(answer == answers[0] for answer in answers)
    assert contents(await store.get_messages(T, 'i', MessageRange())) == ['once']


async def test_an_idempotency_key_reused_for_another_request_is_refused(store: Store) -> None:
    await store.append_messages(T, 'i', [body('q')], utc_now(), idempotency=idem('k', 'f1'))
    with pytest.raises(IdempotencyKeyReused):
        await store.append_messages(T, 'i', [body('other')], utc_now(), idempotency=idem('k', 'f2'))
    assert contents(await store.get_messages(T, 'i', MessageRange())) == ['q']


async def test_idempotency_keys_are_per_session_and_tenant(store: Store) -> None:
    await store.append_messages(T, 'a', [body('1')], utc_now(), idempotency=idem('k'))
    await store.append_messages(T, 'b', [body('2')], utc_now(), idempotency=idem('k'))
    await store.append_messages('other', 'a', [body('3')], utc_now(), idempotency=idem('k'))
    assert contents(await store.get_messages(T, 'b', MessageRange())) == ['2']
    assert contents(await store.get_messages('other', 'a', MessageRange())) == ['3']


async def test_an_idempotent_create_retried_returns_the_first_session(store: Store) -> None:
    first = await store.create_session(T, record('c', b'{"v":1}'), idempotency=idem('k'))
    assert first is not None
    await store.update_metadata(T, 'c', lambda m: b'{"v":2}', utc_now())
    again = await store.create_session(T, record('c', b'{"v":1}'), idempotency=idem('k'))
    assert again is not None
    assert (again.id, again.created_at, again.metadata, again.version) == (first.id, first.created_at, b'{"v":1}', 0)
    assert await store.create_session(T, record('c', b'{"v":1}')) is None, 'without the key: the id is taken'
    with pytest.raises(IdempotencyKeyReused):
        await store.create_session(T, record('c', b'{"v":3}'), idempotency=idem('k', 'f2'))
