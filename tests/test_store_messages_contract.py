"""The storage contract of deleting one message and truncating the tail (SPEC-2 §2): ids never reused, reads that
still answer exactly what they select across the gaps left behind, records aligned, trimming and the summary.
Runs once per store kind (see conftest.STORE_KINDS)."""

import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from memsvc.errors import MessageNotFound, PreconditionFailed, SummaryNotFound, ThroughIdNotStored
from memsvc.models import utc_now
from memsvc.stores import MessageRange, Store, open_store
from memsvc.stores.base import ANY_VERSION
from tests.conftest import make_settings
from tests.helpers import body, contents, ids
from tests.test_store_context_contract import summary
from tests.test_store_contract import T, append, record, version_of


async def stored_ids(store: Store, session_id: str) -> list[int]:
    return ids(await store.get_messages(T, session_id, MessageRange()))


async def test_deleting_a_message_removes_it_and_bumps_the_version(store: Store) -> None:
    await append(store, 's', 'a', 'b', 'c', 'd')  # version 1
    later = utc_now() + timedelta(seconds=5)
    assert await store.delete_message(T, 's', 2, later) == 2
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert (contents(found.messages), found.record.version, found.record.updated_at) == (['a', 'c', 'd'], 2, later)
    with pytest.raises(MessageNotFound):
        await store.delete_message(T, 's', 2, utc_now())
    for never in (0, 5, 10**12):
        with pytest.raises(MessageNotFound):
            await store.delete_message(T, 's', never, utc_now())
    assert await version_of(store, 's') == 2, 'a refused delete changes nothing'
    assert await store.delete_message(T, 'nope', 1, utc_now()) is None
    assert await store.delete_message(T, 'nope', 1, utc_now(), expected_version=3) is None


async def test_deleting_keeps_the_version_precondition(store: Store) -> None:
    await append(store, 's', 'a', 'b')  # version 1
    with pytest.raises(PreconditionFailed) as caught:
        await store.delete_message(T, 's', 1, utc_now(), expected_version=0)
    assert caught.value.current == 1
    with pytest.raises(PreconditionFailed):
        await store.delete_message(T, 's', 99, utc_now(), expected_version=0)  # the version is checked first
    assert await store.delete_message(T, 's', 1, utc_now(), expected_version=1) == 2
    assert await store.delete_message(T, 's', 2, utc_now(), expected_version=ANY_VERSION) == 3
    assert await stored_ids(store, 's') == []


async def test_ids_are_never_reused_after_deleting_the_last_or_every_message(store: Store) -> None:
    await append(store, 's', 'a', 'b', 'c')
    assert await store.delete_message(T, 's', 3, utc_now())
    assert ids(await append(store, 's', 'd')) == [4]
    for message_id in (1, 2, 4):
        assert await store.delete_message(T, 's', message_id, utc_now())
    assert await store.get_messages(T, 's', MessageRange(limit=20)) == b'[]', 'an empty session, not a missing one'
    assert ids(await append(store, 's', 'e', 'f')) == [5, 6]
    assert await stored_ids(store, 's') == [5, 6]


async def test_reads_across_gaps_answer_exactly_what_they_select(store: Store) -> None:
    await append(store, 's', *[f'm{n}' for n in range(1, 13)])
    for gone in (2, 5, 6, 7, 11):
        assert await store.delete_message(T, 's', gone, utc_now())
    kept = [1, 3, 4, 8, 9, 10, 12]

    async def read(**selection: Any) -> list[int]:
        return ids(await store.get_messages(T, 's', MessageRange(**selection)))

    assert await read() == kept
    assert await read(limit=3) == [9, 10, 12]
    assert await read(limit=4, before=9) == [1, 3, 4, 8]
    assert await read(limit=3, before=5) == [1, 3, 4]
    assert await read(limit=2, after=4) == [8, 9]
    assert await read(limit=3, after=1) == [3, 4, 8]
    assert await read(after=5, before=11) == [8, 9, 10]
    assert await read(after=5, before=8) == []
    assert await read(after=12) == []
    assert await read(limit=100, after=0) == kept
    page = await store.get_counted_messages(T, 's', MessageRange(limit=3, before=10))
    assert page is not None
    assert (ids([m for m, _ in page.messages]), page.total) == ([4, 8, 9], 7)


async def test_records_stay_with_their_messages_across_deletes(store: Store) -> None:
    await store.append_messages(T, 'r', [body('old')], utc_now())  # id 1, stored without a record
    await store.append_messages(T, 'r', [body(f'm{n}') for n in range(2, 7)], utc_now(), records=[20, 30, 40, 50, 60])
    await store.delete_message(T, 'r', 1, utc_now())
    await store.delete_message(T, 'r', 4, utc_now())
    page = await store.get_counted_messages(T, 'r', MessageRange())
    assert page is not None
    assert [(ids([m])[0], r) for m, r in page.messages] == [(2, 20), (3, 30), (5, 50), (6, 60)]
    assert page.total == 4
    truncated = await store.truncate_messages(T, 'r', 3, utc_now())
    assert truncated is not None
    assert truncated.deleted == 2
    page = await store.get_counted_messages(T, 'r', MessageRange())
    assert page is not None
    assert [(ids([m])[0], r) for m, r in page.messages] == [(2, 20), (3, 30)]
    await store.append_messages(T, 'r', [body('new')], utc_now(), records=[70])
    page = await store.get_counted_messages(T, 'r', MessageRange(limit=2))
    assert page is not None
    assert [(ids([m])[0], r) for m, r in page.messages] == [(3, 30), (7, 70)]


async def test_truncating_removes_the_tail_and_ids_continue_after_the_highest_given(store: Store) -> None:
    await append(store, 's', *[f'm{n}' for n in range(1, 11)])  # version 1
    later = utc_now() + timedelta(seconds=5)
    truncated = await store.truncate_messages(T, 's', 4, later)
    assert truncated is not None
    assert (truncated.deleted, truncated.version) == (6, 2)
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert (ids(found.messages), found.record.updated_at) == ([1, 2, 3, 4], later)
    assert ids(await append(store, 's', 'regenerated')) == [11]
    assert await stored_ids(store, 's') == [1, 2, 3, 4, 11]
    assert ids(await store.get_messages(T, 's', MessageRange(limit=2, before=11))) == [3, 4]
    again = await store.truncate_messages(T, 's', 11, utc_now())
    assert again is not None
    assert (again.deleted, again.version) == (0, 4), 'nothing to remove: still a write'
    everything = await store.truncate_messages(T, 's', 0, utc_now())
    assert everything is not None
    assert everything.deleted == 5
    assert await store.get_messages(T, 's', MessageRange(limit=20)) == b'[]'
    assert ids(await append(store, 's', 'after all')) == [12]
    assert await store.truncate_messages(T, 'nope', 0, utc_now()) is None


async def test_truncating_keeps_the_version_precondition(store: Store) -> None:
    await append(store, 's', 'a', 'b')  # version 1
    with pytest.raises(PreconditionFailed):
        await store.truncate_messages(T, 's', 1, utc_now(), expected_version=0)
    assert await stored_ids(store, 's') == [1, 2]
    assert await store.truncate_messages(T, 'nope', 1, utc_now(), expected_version=0) is None
    done = await store.truncate_messages(T, 's', 1, utc_now(), expected_version=1)
    assert done is not None
    assert (done.deleted, done.version) == (1, 2)


async def test_a_truncation_below_the_summary_removes_it_a_delete_does_not(store: Store) -> None:
    await append(store, 's', *[f'm{n}' for n in range(1, 9)])
    await store.set_summary(T, 's', summary('first five', 5), 5, utc_now())
    assert await store.delete_message(T, 's', 5, utc_now())
    assert await store.delete_message(T, 's', 3, utc_now())
    assert await store.get_summary(T, 's') == summary('first five', 5), 'deleting what it covers leaves it'
    with pytest.raises(ThroughIdNotStored):
        await store.set_summary(T, 's', summary('x', 3), 3, utc_now())
    await store.truncate_messages(T, 's', 6, utc_now())
    assert await store.get_summary(T, 's') == summary('first five', 5), 'it covers nothing that went'
    await store.truncate_messages(T, 's', 5, utc_now())
    assert await store.get_summary(T, 's') == summary('first five', 5), 'through_id 5 itself is above no cut'
    await store.truncate_messages(T, 's', 4, utc_now())
    with pytest.raises(SummaryNotFound):
        await store.get_summary(T, 's')
    assert await stored_ids(store, 's') == [1, 2, 4]


@pytest.fixture
async def trimming(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with open_store(make_settings(store_kind, request, max_messages_per_session=3)) as opened:
        yield opened


async def test_trimming_counts_stored_messages_across_gaps(trimming: Store) -> None:
    await append(trimming, 't', 'a', 'b', 'c')
    await trimming.delete_message(T, 't', 2, utc_now())
    await append(trimming, 't', 'd')  # 1, 3, 4: three stored, nothing to trim
    assert await stored_ids(trimming, 't') == [1, 3, 4]
    await append(trimming, 't', 'e')
    assert await stored_ids(trimming, 't') == [3, 4, 5]
    await trimming.truncate_messages(T, 't', 3, utc_now())
    await append(trimming, 't', 'f', 'g')
    assert await stored_ids(trimming, 't') == [3, 6, 7]
    assert ids(await trimming.get_messages(T, 't', MessageRange(limit=1, after=3))) == [6]
    result = body('r', 'tool', tool_call_id='c1')
    await trimming.append_messages(T, 't', [result, result, body('h')], utc_now())  # the cut falls on 8, a tool result
    assert await stored_ids(trimming, 't') == [10]
    await append(trimming, 't', 'i')
    assert await stored_ids(trimming, 't') == [10, 11]
    assert await trimming.set_summary(T, 't', summary('x', 10), 10, utc_now())


async def test_random_deletes_truncations_and_appends_match_a_plain_list(store: Store, store_kind: str) -> None:
    """A fixed random walk over appends, deletes, truncations and clears, each followed by reads checked against a
    plain list: the gap arithmetic each store has (Lua on Redis) against the obvious one. Longer on the fast stores;
    the in-memory store is checked far more widely by tests/test_memory_log.py."""
    rng = random.Random(15)
    model: list[int] = []
    next_id = 1
    for _ in range(30 if store_kind.startswith('chroma') else 150):
        step = rng.random()
        if step < 0.45 or not model:
            count = rng.randint(1, 4)
            assert ids(await append(store, 's', *['x'] * count)) == list(range(next_id, next_id + count))
            model += range(next_id, next_id + count)
            next_id += count
        elif step < 0.8:
            gone = rng.choice(model)
            assert await store.delete_message(T, 's', gone, utc_now())
            model.remove(gone)
        elif step < 0.95:
            after = rng.randint(0, next_id)
            done = await store.truncate_messages(T, 's', after, utc_now())
            assert done is not None
            assert done.deleted == len([m for m in model if m > after])
            model = [m for m in model if m <= after]
        else:
            await store.clear_messages(T, 's', utc_now())
            model = []
        assert await stored_ids(store, 's') == model
        pivot = rng.randint(0, next_id)
        limit = rng.randint(1, 4)
        assert ids(await store.get_messages(T, 's', MessageRange(limit=limit))) == model[-limit:]
        assert (
            ids(await store.get_messages(T, 's', MessageRange(limit=limit, before=pivot)))
            == [m for m in model if m < pivot][-limit:]
        )
        assert (
            ids(await store.get_messages(T, 's', MessageRange(limit=limit, after=pivot)))
            == [m for m in model if m > pivot][:limit]
        )
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert ids(found.messages) == model


async def test_a_message_deleted_in_one_tenant_stays_in_another(store: Store) -> None:
    await append(store, 's', 'mine')
    await store.append_messages('other', 's', [body('theirs')], utc_now())
    await store.create_session(T, record('empty'))
    assert await store.delete_message(T, 's', 1, utc_now())
    assert contents(await store.get_messages('other', 's', MessageRange())) == ['theirs']
    with pytest.raises(MessageNotFound):
        await store.delete_message(T, 'empty', 1, utc_now())
