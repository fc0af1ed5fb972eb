"""The context window (SPEC-2 §1): which messages fit a budget, with which token count, what is dropped.
Pure functions, tested in process on stored messages made by `models`, counted by the real tokenizer."""

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from memsvc.context import (
    BARE,
    CALL,
    INSTRUCTION,
    PLAIN,
    RESULT,
    ContextBudgetTooSmall,
    Counted,
    afit,
    kind,
    message_id,
    record,
    tail_of,
    tokens_of,
    trim_count,
)
from memsvc.models import NewMessage, encode_message, timestamp_length, utc_now, with_id
from memsvc.tokens import REPLY_PRIMING, TokenCounter, load_counter
from tests.contexts import Session, call, chat, ids, sent


@pytest.fixture(scope='module')
def counter() -> TokenCounter:
    return load_counter('o200k_base')


def test_a_record_holds_the_count_kind_and_timestamp_length_of_a_message(counter: TokenCounter) -> None:
    cases: list[tuple[NewMessage, int]] = [
        ({'role': 'user', 'content': 'hi'}, PLAIN | BARE),
        ({'role': 'user', 'content': ''}, PLAIN | BARE),
        ({'role': 'system', 'content': 'Ünïcode ✓ <|endoftext|>'}, INSTRUCTION | BARE),
        ({'role': 'assistant', 'content': 'hi', 'metadata': None, 'name': None}, PLAIN | BARE),
        ({'role': 'assistant', 'content': 'hi', 'name': 'bot'}, PLAIN),
        ({'role': 'assistant', 'content': '', 'tool_calls': [call('c1')]}, CALL),
        ({'role': 'assistant', 'content': 'hi', 'tool_calls': []}, PLAIN),
        ({'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1'}, RESULT),
        ({'role': 'tool', 'content': 'sunny'}, RESULT),
        ({'role': 'developer', 'content': 'be brief'}, INSTRUCTION | BARE),
        ({'role': 'system', 'content': 'x', 'metadata': {'a': 1}}, INSTRUCTION),
    ]
    now = utc_now()
    for moment in [now.replace(microsecond=123), now.replace(microsecond=0)]:  # timestamps of 27 and 20 characters
        for message, expected in cases:
            raw = with_id(2**40 + 7, encode_message(message, moment))
            value = record(counter, message, timestamp_length(moment))
            assert value == record(counter, orjson.loads(raw))
            assert (value & 7, tokens_of(value), message_id(raw)) == (expected, counter.message(message), 2**40 + 7)
            assert 0 < value < 2**63
            # a bare message's record says where its timestamp starts, counted from the end
            if expected & BARE:
                assert raw[-tail_of(value) :] == b',"timestamp":"%s"}' % orjson.loads(raw)['timestamp'].encode()
            else:
                assert value & 0xFF == expected


def test_without_a_budget_the_window_is_the_whole_session(counter: TokenCounter) -> None:
    session = chat(counter)
    window = session.context(format='memsvc')
    assert ids(window) == list(range(1, 9))
    assert window.tokens == REPLY_PRIMING + session.tokens(*range(1, 9))
    assert (window.dropped, window.first_id, window.summary) == (0, 1, False)


def test_the_newest_messages_that_fit_oldest_first_and_the_budget_exactly_hit(counter: TokenCounter) -> None:
    session = chat(counter)
    exact = REPLY_PRIMING + session.tokens(1, 2, 7, 8)
    window = session.context(exact, format='memsvc')
    assert ids(window) == [1, 2, 7, 8]
    assert (window.tokens, window.dropped, window.first_id) == (exact, 4, 1)
    shorter = session.context(exact - 1, format='memsvc')
    assert ids(shorter) == [1, 2, 8]
    assert shorter.tokens == exact - session.tokens(7)


def test_a_tool_result_whose_call_does_not_fit_is_left_out_with_it(counter: TokenCounter) -> None:
    session = chat(counter)
    # Room for the tool results 5 and 6 and everything after them, not for their call (4).
    budget = REPLY_PRIMING + session.tokens(1, 2, 5, 6, 7, 8)
    assert budget < REPLY_PRIMING + session.tokens(1, 2, 4, 5, 6, 7, 8)
    window = session.context(budget, format='memsvc')
    assert ids(window) == [1, 2, 7, 8]
    assert window.dropped == 4
    unit = session.context(REPLY_PRIMING + session.tokens(1, 2, 4, 5, 6, 7, 8), format='memsvc')
    assert ids(unit) == [1, 2, 4, 5, 6, 7, 8]


def test_a_summary_follows_the_pinned_run_and_replaces_what_it_covers(counter: TokenCounter) -> None:
    session = chat(counter)
    summary = session.summary('The user asked about the weather in Paris.', through_id=7)
    window = session.context(summary=summary, format='memsvc')
    assert ids(window) == [1, 2, 8]
    assert sent(window)[2] == {'role': 'system', 'content': summary.content}
    assert (window.dropped, window.first_id, window.summary) == (5, 1, True)
    assert window.tokens == REPLY_PRIMING + session.tokens(1, 2, 8) + summary.tokens
    # The pinned run stays when the summary covers it, and nothing older than the summary is read.
    assert session.read == 2  # the summary's own message ends the reading
    openai = session.context(summary=session.summary('All of it.', through_id=8))
    assert sent(openai) == [
        {'role': 'system', 'content': 'You are terse.'},
        {'role': 'developer', 'content': 'Answer in English.'},
        {'role': 'system', 'content': 'All of it.'},
    ]
    assert openai.dropped == 6


def test_a_tool_result_whose_call_the_summary_covers_is_left_out(counter: TokenCounter) -> None:
    session = chat(counter)
    window = session.context(summary=session.summary('Weather asked; tools called.', through_id=4), format='memsvc')
    assert ids(window) == [1, 2, 7, 8]
    assert window.dropped == 4


def test_a_tool_message_answering_no_call_is_never_sent(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'user', 'content': 'hi'},
        {'role': 'tool', 'content': 'a result whose call was deleted', 'tool_call_id': 'gone'},
        {'role': 'assistant', 'content': 'hello'},
        {'role': 'tool', 'content': 'another orphan', 'tool_call_id': 'gone'},
    )
    window = session.context(format='memsvc')
    assert ids(window) == [1, 3]
    assert window.dropped == 2
    assert window.tokens == REPLY_PRIMING + session.tokens(1, 3)


def test_pinned_messages_that_do_not_fit_are_an_error_saying_what_they_need(counter: TokenCounter) -> None:
    session = chat(counter)
    needed = REPLY_PRIMING + session.tokens(1, 2)
    assert sent(session.context(needed)) == [
        {'role': 'system', 'content': 'You are terse.'},
        {'role': 'developer', 'content': 'Answer in English.'},
    ]
    with pytest.raises(ContextBudgetTooSmall) as raised:
        session.context(needed - 1)
    assert (raised.value.needed, raised.value.code) == (needed, 'context_budget_too_small')
    assert str(needed) in raised.value.message
    summary = session.summary('A long conversation about the weather.', through_id=8)
    with pytest.raises(ContextBudgetTooSmall) as raised:
        session.context(needed, summary)
    assert raised.value.needed == needed + summary.tokens


def test_a_budget_too_small_for_any_message_is_an_empty_window(counter: TokenCounter) -> None:
    session = Session(counter, {'role': 'user', 'content': 'hello'})
    for budget in (1, REPLY_PRIMING + session.tokens(1) - 1):
        window = session.context(budget, format='memsvc')
        assert (sent(window), window.tokens, window.dropped, window.first_id) == ([], 0, 1, None)
    empty = Session(counter).context(1)
    assert (sent(empty), empty.tokens, empty.dropped, empty.first_id) == ([], 0, 0, None)


def test_reading_stops_once_the_budget_is_full(counter: TokenCounter) -> None:
    long = Session(counter, *({'role': 'user', 'content': f'message number {i:05d}'} for i in range(10_000)))
    each = long.tokens(1)
    window = long.context(REPLY_PRIMING + 20 * each, format='memsvc')
    assert ids(window) == list(range(9_981, 10_001))
    assert long.read <= 21
    assert window.dropped == 9_980


async def test_reading_pages_asynchronously_chooses_the_same_window_and_stops_asking(counter: TokenCounter) -> None:
    long = Session(counter, *({'role': 'user', 'content': f'message number {i:05d}'} for i in range(1_000)))
    asked: list[int] = []

    async def pages() -> AsyncIterator[list[Counted]]:
        rest = long.stored[::-1]
        for start in range(0, len(rest), 8):
            asked.append(start)
            await asyncio.sleep(0)
            yield rest[start : start + 8]

    for budget in (None, 1, REPLY_PRIMING + 20 * long.tokens(1), REPLY_PRIMING + long.tokens(*range(1, 1_001))):
        asked.clear()
        got = await afit(long.pinned, None, pages(), len(long.stored), budget)
        assert got == long.fit(budget)
        if budget == REPLY_PRIMING + 20 * long.tokens(1):
            assert asked == [0, 8, 16]


@pytest.mark.parametrize(
    ('roles', 'at_least', 'expected'),
    [
        (['user', 'assistant', 'user'], 1, 1),
        (['assistant', 'tool', 'tool', 'user'], 1, 3),
        (['assistant', 'tool', 'tool', 'assistant', 'tool'], 2, 3),
        (['user', 'assistant', 'tool'], 0, 0),
        (['tool', 'user'], 0, 1),
        (['assistant', 'tool', 'tool'], 1, 3),
        ([], 2, 2),
    ],
)
def test_trimming_takes_whole_tool_units(roles: list[str], at_least: int, expected: int) -> None:
    kinds = [kind({'role': role, 'tool_calls': [call('c')]}) for role in roles]
    assert trim_count(kinds, at_least) == expected


# The providers' own request types, validated strictly: every key known (`extra='forbid'`), no coercion, and
# the SDKs' `Iterable[...]` fields (which pydantic checks lazily) walked so that every item is checked.
