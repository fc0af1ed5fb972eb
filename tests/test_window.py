"""The context window's fast path (`memsvc.window.fast`) answers exactly what the general path (`context.fit` and
`render`) answers, byte for byte, whenever it answers; and it answers the common window: plain bare messages, no
summary, no pinned run. Run on the in-memory store, whose read is the reference (the stores' reads are the
contract suite's: tests/test_store_context_contract.py)."""

import asyncio
from typing import Any, get_args

import hypothesis
import orjson
import pytest
from hypothesis import strategies as st

from memsvc import window
from memsvc.context import ContextBudgetTooSmall, record
from memsvc.manager import AsyncMemoryManager
from memsvc.models import NewMessage, NewSession, encode_message, timestamp_length, utc_now
from memsvc.render import Format, render
from memsvc.settings import Settings
from memsvc.stores.base import WindowRead
from memsvc.stores.memory import MemoryStore
from memsvc.tokens import DEFAULT_ENCODING, REPLY_PRIMING, TokenCounter, shared_counter
from tests.contexts import call

T = 't'
FAST_FORMATS: list[Format] = ['openai', 'responses', 'memsvc']


@pytest.fixture(scope='module')
def counter() -> TokenCounter:
    return shared_counter(DEFAULT_ENCODING)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def stored(
    counter: TokenCounter, messages: list[dict[str, Any]], summary_through: int | None = None
) -> AsyncMemoryManager:
    manager = AsyncMemoryManager(MemoryStore(), Settings(max_batch=10_000), counter)
    await manager.create_session(T, NewSession(id='s'))
    if messages:
        sent: list[NewMessage] = [message for message in messages]  # type: ignore[misc]
        await manager.add_messages(T, 's', sent, batch=True)
    if summary_through is not None and messages:
        await manager.set_summary(T, 's', 'the story so far', min(max(summary_through, 1), len(messages)))
    return manager


async def both(
    manager: AsyncMemoryManager, max_tokens: int | None, format: Format
) -> tuple[bytes | None, bytes, WindowRead]:
    """The fast path's answer (None: it declined) and the general path's, from the same first read. The fast path
    answers the read as the in-memory store hands it over (one bytes) and as Redis and Chroma do (a bytes per
    message, records in a list): where both answer, they answer the same."""
    size = window.page_size(max_tokens)
    first = await manager.store.read_window(T, 's', size, window.HEAD_PAGE)
    assert first is not None
    fitted = await window.general(manager.store, T, 's', first, manager.counter, False, max_tokens, size)
    fast = window.fast(first, max_tokens, format)
    listed = window.fast(first._replace(messages=list(first.messages), records=list(first.records)), max_tokens, format)
    assert listed == fast
    return fast, render(fitted, format, manager.counter).to_json(), first


TRICKY = [
    '{"id":1,',
    ',"timestamp":"2026-01-01T00:00:00Z"}',
    '"},{"id":2,"role":"user","content":"',
    ',"timestamp":"x"},{"id":9,',
    'ends with a backslash \\',
    '\\"quoted\\"',
    '',
    'Ünïcødé 🌦️ <|endoftext|>',
    'line\nbreak\ttab \u2028',
]


@pytest.mark.parametrize('format', FAST_FORMATS)
def test_contents_that_look_like_json_structure_are_copied_as_they_are(counter: TokenCounter, format: Format) -> None:
    messages = [{'role': ['user', 'assistant'][n % 2], 'content': text} for n, text in enumerate(TRICKY)]
    manager = run(stored(counter, messages))
    for budget in [None, 10_000, REPLY_PRIMING + 40, 1]:
        fast, general, _ = run(both(manager, budget, format))
        assert fast == general
    answer = orjson.loads(run(both(manager, None, format))[0])
    contents = [message['content'] for message in answer['messages']]
    assert contents == TRICKY
    assert answer['messages'][0] == (
        {'id': 1, 'role': 'user', 'content': TRICKY[0], 'timestamp': answer['messages'][0]['timestamp']}
        if format == 'memsvc'
        else {**({'type': 'message'} if format == 'responses' else {}), 'role': 'user', 'content': TRICKY[0]}
    )


def test_the_common_window_is_answered_by_the_fast_path(counter: TokenCounter) -> None:
    chat = [{'role': ['user', 'assistant'][n % 2], 'content': f'turn {n} ' * 5} for n in range(300)]
    manager = run(stored(counter, chat))
    answer = run(manager.context(T, 's', max_tokens=4000, format='openai'))
    assert isinstance(answer, bytes)
    payload = orjson.loads(answer)
    assert payload['dropped'] + len(payload['messages']) == 300
    assert payload['first_id'] == 301 - len(payload['messages'])
    # every message of the first read fits and older ones exist: the fast path reads more at once
    first = run(manager.store.read_window(T, 's', window.page_size(4000), window.HEAD_PAGE))
    assert len(first.messages) < payload['dropped'] + len(payload['messages'])
    assert window.fast(first, 4000, 'openai') == b''
    whole = run(manager.context(T, 's', max_tokens=2_000_000, format='openai'))
    assert isinstance(whole, bytes)
    assert orjson.loads(whole)['dropped'] == 0
    # a summary, a pinned run, a message with a name, another encoding, anthropic: the general path
    for messages, summary, encoding, format in [
        (chat[:4], 2, DEFAULT_ENCODING, 'openai'),
        ([{'role': 'system', 'content': 'sys'}, *chat[:4]], None, DEFAULT_ENCODING, 'openai'),
        ([*chat[:4], {'role': 'user', 'content': 'hi', 'name': 'ann'}], None, DEFAULT_ENCODING, 'openai'),
        (chat[:4], None, 'cl100k_base', 'openai'),
        (chat[:4], None, DEFAULT_ENCODING, 'anthropic'),
    ]:
        other = run(stored(counter, messages, summary))
        answer = run(other.context(T, 's', max_tokens=4000, format=format, encoding=encoding))
        assert not isinstance(answer, bytes)


def test_a_long_sessions_pinned_run_and_summary_come_with_the_first_read(counter: TokenCounter) -> None:
    chat = [{'role': 'system', 'content': 'sys'}] + [{'role': 'user', 'content': f'm{n}'} for n in range(200)]
    manager = run(stored(counter, chat, summary_through=150))
    first = run(manager.store.read_window(T, 's', 20, window.HEAD_PAGE))
    assert (len(first.messages), len(first.head), first.oldest_id, first.total) == (20, 1, 1, 201)
    assert first.summary is not None
    answer = run(manager.context(T, 's', max_tokens=4000, format='memsvc'))
    assert not isinstance(answer, bytes)
    ids = [message.get('id') for message in orjson.loads(answer.to_json())['messages']]
    assert ids == [1, None, *range(151, 202)]


def test_ids_that_get_a_digit_across_deleted_messages_are_sliced_where_they_do(counter: TokenCounter) -> None:
    chat = [{'role': ['user', 'assistant'][n % 2], 'content': f'turn {n} ' + 'word ' * 30} for n in range(1005)]
    manager = run(stored(counter, chat))
    for gone in [8, 9, 97, 98, 101, 999, 1000]:  # ids 1 to 1005; the windows below cross 9/10, 99/100, 999/1000
        run(manager.delete_message(T, 's', gone))
    for budget in [None, 300, 2000]:  # the whole session, ~7 messages, ~48
        for format in FAST_FORMATS:
            fast, general, _ = run(both(manager, budget, format))
            assert fast == general


def test_timestamps_of_other_lengths_take_the_general_path_where_messages_are_sliced(counter: TokenCounter) -> None:
    """A message written on a whole second has a shorter timestamp: a read of a bytes per message cannot slice
    the window at one length, and declines; the in-memory store's buffer answers the same as the general path."""
    manager = run(stored(counter, []))
    store, now = manager.store, utc_now()
    for moment in [now.replace(microsecond=0), now.replace(microsecond=5), now.replace(microsecond=0)]:
        message: NewMessage = {'role': 'user', 'content': 'hello there'}
        body = encode_message(message, moment)
        run(store.append_messages(T, 's', [body], moment, records=[record(counter, message, timestamp_length(moment))]))
    first = run(store.read_window(T, 's', 16, window.HEAD_PAGE))
    assert first is not None
    listed = first._replace(messages=list(first.messages), records=list(first.records))
    assert window.fast(listed, 4000, 'openai') is None
    fitted = run(window.general(store, T, 's', first, counter, False, 4000, 16))
    assert window.fast(first, 4000, 'openai') == render(fitted, 'openai', counter).to_json()


ROLES = st.sampled_from(['user', 'assistant', 'user', 'assistant', 'system', 'developer'])
TEXT = st.sampled_from(TRICKY) | st.text(max_size=40)


@st.composite
def sessions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Mostly plain turns (often only those, where the fast path answers), with tool units, strays and names."""
    plain_only = draw(st.booleans())
    messages: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 40))):
        kind = 'plain' if plain_only else draw(st.sampled_from(['plain', 'plain', 'plain', 'unit', 'stray', 'named']))
        if kind == 'plain':
            role = draw(st.sampled_from(['user', 'assistant'])) if plain_only else draw(ROLES)
            messages.append({'role': role, 'content': draw(TEXT)})
        elif kind == 'named':
            messages.append({'role': 'user', 'content': draw(TEXT), 'name': 'ann'})
        elif kind == 'unit':
            calls = [call(f'c{n}.{i}', 'f', draw(TEXT)) for i in range(draw(st.integers(1, 2)))]
            messages.append({'role': 'assistant', 'content': draw(TEXT), 'tool_calls': calls})
            for made in calls[: draw(st.integers(0, len(calls)))]:
                messages.append({'role': 'tool', 'content': draw(TEXT), 'tool_call_id': made['id']})
        else:
            messages.append({'role': 'tool', 'content': draw(TEXT), 'tool_call_id': 'gone'})
    return messages


@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(
    messages=sessions(),
    budget=st.none() | st.integers(1, 600),
    through=st.none() | st.integers(1, 40),
)
def test_the_fast_path_answers_as_the_general_path(
    counter: TokenCounter, messages: list[dict[str, Any]], budget: int | None, through: int | None
) -> None:
    manager = run(stored(counter, messages, through))
    plain = all(m['role'] in ('user', 'assistant') and m.keys() == {'role', 'content'} for m in messages)
    common = plain and (through is None or not messages)
    for format in get_args(Format):
        try:
            fast, general, first = run(both(manager, budget, format))
        except ContextBudgetTooSmall:
            continue
        hypothesis.event('fast' if fast else 'read on' if fast == b'' else 'general')
        if fast:
            assert fast == general
        elif common and format != 'anthropic' and messages:
            assert fast == b''  # declined only to read on
            assert len(first.messages) < first.total
