"""The in-memory store keeps each session's messages in one byte buffer with their end offsets, and the ids it does
not store as gaps: random appends, trims to the session limit, deletes, truncations, clears and reads, checked
against a plain list of the same messages."""

import asyncio
from typing import Any

import hypothesis
import orjson
from hypothesis import strategies as st

from memsvc.models import NewMessage, SessionRecord, encode_message, utc_now
from memsvc.stores.base import Limits, MessageRange
from memsvc.stores.memory import MemoryStore
from tests.helpers import parsed

T = 'default'
ids_or_none = st.none() | st.integers(0, 40)
Step = tuple[str, list[str]]
step: st.SearchStrategy[Step] = st.one_of(
    st.lists(st.text(max_size=12), min_size=1, max_size=6).map(lambda texts: ('append', texts)),
    st.just(('clear', [])),
    st.integers(0, 7).map(lambda n: ('delete', [str(n)])),  # the nth stored message, if there is one
    st.integers(0, 40).map(lambda n: ('truncate', [str(n)])),
)
selection = st.builds(MessageRange, limit=st.none() | st.integers(1, 8), before=ids_or_none, after=ids_or_none)


def expected(model: list[dict[str, Any]], chosen: MessageRange) -> list[dict[str, Any]]:
    found = [
        m
        for m in model
        if (chosen.after is None or m['id'] > chosen.after) and (chosen.before is None or m['id'] < chosen.before)
    ]
    if chosen.limit is None:
        return found
    return found[: chosen.limit] if chosen.after is not None else found[-chosen.limit :]


async def check(max_messages: int, steps: list[Step], reads: list[MessageRange]) -> None:
    store = MemoryStore(Limits(max_messages=max_messages))
    now = utc_now()
    await store.create_session(T, SessionRecord('s', now, now, b'{}', 0))
    model: list[dict[str, Any]] = []
    next_id = 1
    for kind, texts in steps:
        if kind == 'clear':
            await store.clear_messages(T, 's', utc_now())
            model = []
            continue
        if kind == 'delete':
            n = int(texts[0])
            if n < len(model):
                assert await store.delete_message(T, 's', model[n]['id'], utc_now())
                del model[n]
        elif kind == 'truncate':
            after = int(texts[0])
            done = await store.truncate_messages(T, 's', after, utc_now())
            assert done is not None
            assert done.deleted == len([m for m in model if m['id'] > after])
            model = [m for m in model if m['id'] <= after]
        if kind in ('delete', 'truncate'):
            await check_reads(store, model, reads)
            continue
        bodies = [encode_message(NewMessage(role='user', content=text), utc_now()) for text in texts]
        appended = await store.append_messages(T, 's', bodies, utc_now())
        new = [orjson.loads(m) for m in appended.messages]
        assert [m['id'] for m in new] == list(range(next_id, next_id + len(texts)))
        assert [m['content'] for m in new] == texts
        next_id += len(texts)
        model = (model + new)[-max_messages:] if max_messages else model + new
        await check_reads(store, model, reads)


async def check_reads(store: MemoryStore, model: list[dict[str, Any]], reads: list[MessageRange]) -> None:
    found = await store.get_session(T, 's', with_messages=True)
    assert found is not None
    assert parsed(found.messages) == model
    for chosen in reads:
        assert parsed(await store.get_messages(T, 's', chosen)) == expected(model, chosen), chosen
    page = await store.get_counted_messages(T, 's', MessageRange())
    assert page is not None
    assert page.total == len(model)


@hypothesis.given(
    max_messages=st.integers(0, 5),
    steps=st.lists(step, min_size=1, max_size=16),
    reads=st.lists(selection, min_size=1, max_size=4),
)
@hypothesis.settings(max_examples=300, deadline=None)
def test_reads_after_appends_trims_deletes_truncations_and_clears_match_a_plain_list(
    max_messages: int, steps: list[Step], reads: list[MessageRange]
) -> None:
    asyncio.run(check(max_messages, steps, reads))
