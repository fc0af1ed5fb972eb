"""The storage contract of what the context window needs: the summary slot, the records stored next to each message,
and trimming that never leaves a tool message first. Runs once per store kind (see conftest.STORE_KINDS)."""

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import orjson
import pytest

from memsvc.context import record as make_record
from memsvc.context import tokens_of
from memsvc.errors import IdempotencyKeyReused, PreconditionFailed, SummaryNotFound, ThroughIdNotStored
from memsvc.manager import AsyncMemoryManager
from memsvc.models import NewMessage, utc_now
from memsvc.settings import Settings
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores.base import ANY_VERSION, WindowRead
from memsvc.tokens import DEFAULT_ENCODING, shared_counter
from tests.conftest import make_settings
from tests.helpers import body, contents, ids, parsed
from tests.test_store_contract import T, append, idem, record, version_of

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
    counter = shared_counter(DEFAULT_ENCODING)
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


# --- the context window's first read: one step ------------------------------------------------------------


SYSTEM_RECORD, USER_RECORD = 9 << 3 | 3 | 4, 12 << 3 | 4


async def test_the_window_read_has_the_newest_the_count_the_oldest_id_the_head_and_the_summary(store: Store) -> None:
    assert await store.read_window(T, 'nope', 2, 16) is None
    await store.create_session(T, record('w'))
    empty = await store.read_window(T, 'w', 2, 16)
    assert empty is not None
    assert (list(empty.messages), list(empty.records), empty.total, empty.oldest_id) == ([], [], 0, 0)
    assert (list(empty.head), empty.summary) == ([], None)
    await store.append_messages(T, 'w', [body('old system', 'system')], utc_now())  # stored without a record
    bodies = [body('sys', 'developer'), body('q'), body('a', 'assistant'), body('q2')]
    await store.append_messages(T, 'w', bodies, utc_now(), records=[SYSTEM_RECORD, *[USER_RECORD] * 3])
    messages = await stored_messages(store, 'w')
    newest = await store.read_window(T, 'w', 2, 16)
    assert newest is not None
    assert (list(newest.messages), list(newest.records)) == (messages[3:], [USER_RECORD] * 2)
    assert (newest.total, newest.oldest_id, newest.summary) == (5, 1, None)
    # the head: the leading system/developer run (by role for the one stored without a record), bounded
    assert (list(newest.head), list(newest.head_records)) == (messages[:2], [0, SYSTEM_RECORD])
    bounded = await store.read_window(T, 'w', 2, 1)
    assert bounded is not None
    assert (list(bounded.head), list(bounded.head_records)) == (messages[:1], [0])
    # all of it: the head is in `messages`, so none is read
    whole = await store.read_window(T, 'w', None, 16)
    assert whole is not None
    assert (list(whole.messages), list(whole.records)) == (messages, [0, SYSTEM_RECORD, *[USER_RECORD] * 3])
    assert list(whole.head) == []
    assert listed(await store.read_window(T, 'w', 5, 16)) == listed(whole)
    await store.set_summary(T, 'w', summary('so far', 3), 3, utc_now())
    summarized = await store.read_window(T, 'w', 1, 16)
    assert summarized is not None
    assert summarized.summary == summary('so far', 3)
    assert listed(await store.read_window(T, 'w', 1, 16)) == listed(summarized)


def listed(read: WindowRead | None) -> tuple[object, ...]:
    """A window read with its sequences as lists (a store may hand over its own sequence types)."""
    assert read is not None
    return tuple(list(part) if isinstance(part, Sequence) and not isinstance(part, bytes) else part for part in read)


async def test_the_window_read_reports_the_oldest_id_after_trimming(trimming: Store) -> None:
    await trimming.append_messages(T, 't', [body(f'm{n}') for n in range(5)], utc_now(), records=[USER_RECORD] * 5)
    read = await trimming.read_window(T, 't', 2, 16)
    assert read is not None
    assert (read.total, read.oldest_id, ids(b'[' + b','.join(read.messages) + b']')) == (3, 3, [4, 5])
    assert list(read.head) == []
    await trimming.clear_messages(T, 't', utc_now())
    cleared = await trimming.read_window(T, 't', 2, 16)
    assert cleared is not None
    assert (cleared.total, cleared.oldest_id, list(cleared.messages)) == (0, 0, [])


async def test_the_window_read_reports_the_oldest_id_the_session_stores_across_gaps(store: Store) -> None:
    await store.append_messages(T, 'g', [body(f'm{n}') for n in range(6)], utc_now(), records=[USER_RECORD] * 6)
    for gone in (1, 2, 4):
        assert await store.delete_message(T, 'g', gone, utc_now()) is not None
    read = await store.read_window(T, 'g', 2, 16)
    assert read is not None
    assert (read.total, read.oldest_id, ids(b'[' + b','.join(read.messages) + b']')) == (3, 3, [5, 6])
