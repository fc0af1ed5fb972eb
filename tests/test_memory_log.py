"""The in-memory store keeps each session's messages in one byte buffer with their end offsets: random
appends, trims to the session limit, clears and reads, checked against a plain list of the same messages."""

import asyncio
from typing import Any

import hypothesis
import orjson
from hypothesis import strategies as st

from memsvc.models import NewMessage, encode_message, utc_now
from memsvc.stores.base import Limits, MessageRange
from memsvc.stores.memory import MemoryStore
from tests.helpers import parsed

T = 'default'
ids_or_none = st.none() | st.integers(0, 40)
Step = tuple[str, list[str]]
step: st.SearchStrategy[Step] = st.one_of(
    st.lists(st.text(max_size=12), min_size=1, max_size=6).map(lambda texts: ('append', texts)),
    st.just(('clear', [])),
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
    model: list[dict[str, Any]] = []
    next_id = 1
    for kind, texts in steps:
        if kind == 'clear':
            await store.clear_messages(T, 's', utc_now())
            model = []
            continue
        bodies = [encode_message(NewMessage(role='user', content=text), utc_now()) for text in texts]
        appended = await store.append_messages(T, 's', bodies, utc_now())
        new = [orjson.loads(m) for m in appended.messages]
        assert [m['id'] for m in new] == list(range(next_id, next_id + len(texts)))
        assert [m['content'] for m in new] == texts
        next_id += len(texts)
        model = (model + new)[-max_messages:] if max_messages else model + new
        found = await store.get_session(T, 's', with_messages=True)
        assert found is not None
        assert parsed(found.messages) == model
        for chosen in reads:
            assert parsed(await store.get_messages(T, 's', chosen)) == expected(model, chosen), chosen


@hypothesis.given(
    max_messages=st.integers(0, 5),
    steps=st.lists(step, min_size=1, max_size=12),
    reads=st.lists(selection, min_size=1, max_size=4),
)
@hypothesis.settings(max_examples=300, deadline=None)
def test_reads_after_appends_trims_and_clears_match_a_plain_list(
    max_messages: int, steps: list[Step], reads: list[MessageRange]
) -> None:
    asyncio.run(check(max_messages, steps, reads))
