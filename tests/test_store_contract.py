"""The storage contract every store keeps. Runs once per store kind (see conftest.STORE_KINDS)."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import orjson
import pytest

from memsvc.app import default_counter
from memsvc.context import record as make_record
from memsvc.context import tokens_of
from memsvc.errors import IdempotencyKeyReused, InvalidInput, PreconditionFailed, SummaryNotFound, ThroughIdNotStored
from memsvc.manager import AsyncMemoryManager
from memsvc.models import NewMessage, SessionRecord, encode_message, json_array, to_micros, utc_now
from memsvc.settings import Settings
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores.base import ANY_VERSION, Idempotency
from tests.conftest import make_settings
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


# --- the summary: part of the session ---------------------------------------------------------------------


def summary(content: str, through_id: int) -> bytes:
    return orjson.dumps({'content': content, 'through_id': through_id, 'updated_at': '2026-01-01T00:00:00Z'})


async def test_a_summary_is_stored_replaced_and_deleted_bumping_the_version(store: Store) -> None:
    await append(store, 's', 'a', 'b', 'c')  # version 1
    with pytest.raises(SummaryNotFound):
        await store.get_summary(T, 's')
    written = await store.set_summary(T, 's', summary('first', 2), 2, utc_now())
    assert written is not None
    assert (written.summary, written.version) == (summary('first', 2), 2)
    assert await version_of(store, 's') == 2
    assert await store.get_summary(T, 's') == summary('first', 2)
    later = utc_now() + timedelta(seconds=5)
    replaced = await store.set_summary(T, 's', summary('second', 3), 3, later)
    assert replaced is not None
    assert replaced.version == 3
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert found.record.updated_at == later
    assert contents(found.messages) == ['a', 'b', 'c'], 'the messages a summary covers stay stored'
    assert await store.get_summary(T, 's') == summary('second', 3)
    deleted = await store.delete_summary(T, 's', utc_now())
    assert deleted is not None
    assert deleted.version == 4 == await version_of(store, 's')
    with pytest.raises(SummaryNotFound):
        await store.get_summary(T, 's')
    with pytest.raises(SummaryNotFound):
        await store.delete_summary(T, 's', utc_now())
    assert await version_of(store, 's') == 4, 'deleting no summary changes nothing'


async def test_a_summary_of_an_unknown_session_is_absent(store: Store) -> None:
    assert await store.set_summary(T, 'nope', summary('x', 1), 1, utc_now()) is None
    assert await store.get_summary(T, 'nope') is None
    assert await store.delete_summary(T, 'nope', utc_now()) is None
    assert await store.get_session(T, 'nope', with_messages=False) is None, 'a summary never creates a session'


async def test_a_summary_names_a_stored_message(store: Store) -> None:
    await store.create_session(T, record('s'))
    with pytest.raises(ThroughIdNotStored):
        await store.set_summary(T, 's', summary('x', 1), 1, utc_now())
    await append(store, 's', 'a', 'b')
    for through_id in (0, 3):
        with pytest.raises(ThroughIdNotStored):
            await store.set_summary(T, 's', summary('x', through_id), through_id, utc_now())
    await store.clear_messages(T, 's', utc_now())
    await append(store, 's', 'c')  # id 3
    with pytest.raises(ThroughIdNotStored):
        await store.set_summary(T, 's', summary('x', 2), 2, utc_now())
    assert await version_of(store, 's') == 3, 'a refused summary changes nothing'
    assert await store.set_summary(T, 's', summary('x', 3), 3, utc_now())


async def test_summary_writes_keep_the_version_precondition(store: Store) -> None:
    await append(store, 's', 'a')  # version 1
    with pytest.raises(PreconditionFailed) as caught:
        await store.set_summary(T, 's', summary('x', 1), 1, utc_now(), expected_version=0)
    assert caught.value.current == 1
    written = await store.set_summary(T, 's', summary('x', 1), 1, utc_now(), expected_version=1)
    assert written is not None
    assert written.version == 2
    with pytest.raises(PreconditionFailed):
        await store.delete_summary(T, 's', utc_now(), expected_version=1)
    assert await store.get_summary(T, 's') == summary('x', 1)
    deleted = await store.delete_summary(T, 's', utc_now(), expected_version=ANY_VERSION)
    assert deleted is not None
    assert deleted.version == 3


async def test_an_idempotent_summary_write_retried_returns_the_first_answer(store: Store) -> None:
    await append(store, 's', 'a', 'b')
    first = await store.set_summary(T, 's', summary('x', 1), 1, utc_now(), idempotency=idem('k'))
    await store.set_summary(T, 's', summary('y', 2), 2, utc_now())
    again = await store.set_summary(T, 's', summary('x', 1), 1, utc_now(), idempotency=idem('k'))
    assert again == first
    assert await store.get_summary(T, 's') == summary('y', 2), 'the retry wrote nothing'
    with pytest.raises(IdempotencyKeyReused):
        await store.set_summary(T, 's', summary('z', 1), 1, utc_now(), idempotency=idem('k', 'f2'))
    deleted = await store.delete_summary(T, 's', utc_now(), idempotency=idem('d', 'f3'))
    assert deleted == await store.delete_summary(T, 's', utc_now(), idempotency=idem('d', 'f3'))


async def test_the_summary_goes_with_its_session_and_its_messages(store: Store) -> None:
    await append(store, 's', 'a')
    await store.set_summary(T, 's', summary('x', 1), 1, utc_now())
    await store.clear_messages(T, 's', utc_now())
    with pytest.raises(SummaryNotFound):
        await store.get_summary(T, 's')
    await append(store, 's', 'b')  # id 2
    await store.set_summary(T, 's', summary('x', 2), 2, utc_now())
    assert await store.delete_session(T, 's')
    await append(store, 's', 'c')
    with pytest.raises(SummaryNotFound):
        await store.get_summary(T, 's')


async def test_summaries_are_per_tenant(store: Store) -> None:
    await append(store, 's', 'a')
    await store.append_messages('other', 's', [body('b')], utc_now())
    await store.set_summary(T, 's', summary('mine', 1), 1, utc_now())
    with pytest.raises(SummaryNotFound):
        await store.get_summary('other', 's')
    assert await store.get_summary(T, 's') == summary('mine', 1)


# --- records: stored next to each message ----------------------------------------------------------------


async def test_records_are_stored_and_read_back_with_their_messages(store: Store) -> None:
    await store.append_messages(T, 'r', [body('old')], utc_now())  # stored without a record
    records = [8, 2**62 + 5, 1234567]
    stored = await store.append_messages(T, 'r', [body('a'), body('b'), body('c')], utc_now(), records=records)
    page = await store.get_counted_messages(T, 'r', MessageRange())
    assert page is not None
    assert page.total == 4
    assert page.messages == list(zip(await stored_messages(store, 'r'), [0, *records], strict=True))
    assert [m for m, _ in page.messages[1:]] == stored.messages
    newest = await store.get_counted_messages(T, 'r', MessageRange(limit=2))
    assert newest is not None
    assert [(ids([m])[0], r) for m, r in newest.messages] == [(3, records[1]), (4, records[2])]
    older = await store.get_counted_messages(T, 'r', MessageRange(limit=2, before=3))
    assert older is not None
    assert [(ids([m])[0], r) for m, r in older.messages] == [(1, 0), (2, records[0])]
    head = await store.get_counted_messages(T, 'r', MessageRange(limit=1, after=0))
    assert head is not None
    assert [r for _, r in head.messages] == [0]
    empty = await store.get_counted_messages(T, 'r', MessageRange(after=4))
    assert empty is not None
    assert (empty.messages, empty.total) == ([], 4)
    assert await store.get_counted_messages(T, 'nope', MessageRange()) is None


async def stored_messages(store: Store, session_id: str) -> list[bytes]:
    """The session's messages as stored, one bytes each."""
    return [orjson.dumps(m) for m in parsed(await store.get_messages(T, session_id, MessageRange()))]


async def test_the_manager_stores_each_messages_count_and_counts_older_ones_on_read(
    store: Store, settings: Settings
) -> None:
    counter = default_counter()
    manager = AsyncMemoryManager(store, settings, counter)
    await store.append_messages(T, 'c', [body('stored before records were', 'assistant', name='bot')], utc_now())
    call = {'id': 'c1', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}}
    sent: list[NewMessage] = [
        {'role': 'system', 'content': 'You are terse.'},
        {'role': 'user', 'content': 'Weather in Paris? Ünïcødé, emoji 🌦️ and code `x = 1`', 'name': 'ann'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call]},
        {'role': 'tool', 'content': 'sunny, 21 degrees', 'tool_call_id': 'c1'},
        {'role': 'assistant', 'content': 'Sunny.', 'metadata': {'model': 'x'}},
    ]
    await manager.add_messages(T, 'c', sent, batch=True)
    page = await manager.get_counted_messages(T, 'c', MessageRange())
    assert page.total == 6
    assert [tokens_of(value) for _, value in page.messages] == [counter.stored(raw) for raw, _ in page.messages]
    assert [value for _, value in page.messages] == [
        make_record(counter, orjson.loads(raw)) for raw, _ in page.messages
    ]
    stored = await store.get_counted_messages(T, 'c', MessageRange())
    assert stored is not None
    assert stored.messages[0][1] == 0, 'a message stored without a record is counted when read'
    assert [value for _, value in stored.messages[1:]] == [value for _, value in page.messages[1:]]


# --- trimming to MEMSVC_MAX_MESSAGES_PER_SESSION: a tool message never first ---------------------------------


@pytest.fixture
async def trimming(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with open_store(make_settings(store_kind, request, max_messages_per_session=3)) as opened:
        yield opened


CALL_RECORD, RESULT_RECORD, PLAIN_RECORD = 40 << 3 | 1, 20 << 3 | 2, 10 << 3


async def test_trimming_takes_the_tool_results_of_a_trimmed_call_with_it(trimming: Store) -> None:
    call = body('', 'assistant', tool_calls=[{'id': 'c1', 'type': 'function', 'function': {'name': 'f'}}])
    result = body('r', 'tool', tool_call_id='c1')
    bodies = [body('q'), call, result, result, body('answer')]
    records = [PLAIN_RECORD, CALL_RECORD, RESULT_RECORD, RESULT_RECORD, PLAIN_RECORD]
    await trimming.append_messages(T, 't', bodies[:3], utc_now(), records=records[:3])
    await trimming.append_messages(T, 't', bodies[3:], utc_now(), records=records[3:])
    # Down to 3 would start at the second tool message (id 4), whose call (id 2) is gone: it goes too.
    assert ids(await trimming.get_messages(T, 't', MessageRange())) == [5]
    page = await trimming.get_counted_messages(T, 't', MessageRange())
    assert page is not None
    assert [r for _, r in page.messages] == [PLAIN_RECORD]
    await trimming.append_messages(T, 't', [body('x'), body('y')], utc_now(), records=[PLAIN_RECORD] * 2)
    assert ids(await trimming.get_messages(T, 't', MessageRange())) == [5, 6, 7]


async def test_trimming_reads_the_role_of_messages_stored_without_records(trimming: Store) -> None:
    result = body('r', 'tool', tool_call_id='c1')
    await trimming.append_messages(T, 't', [body('q'), body('', 'assistant'), result, result], utc_now())
    assert ids(await trimming.get_messages(T, 't', MessageRange())) == [2, 3, 4], 'an assistant message was kept first'
    await trimming.append_messages(T, 't', [body('next')], utc_now())
    assert ids(await trimming.get_messages(T, 't', MessageRange())) == [5]
