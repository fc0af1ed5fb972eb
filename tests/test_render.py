"""The context window's shapes (SPEC-2 §1, rendering): each format as the provider's SDK types it, checked
strictly, and properties of any window: within budget, exactly counted, never starting with an orphan tool
result."""

from collections.abc import Iterable
from typing import Any, get_args

import hypothesis
import orjson
import pytest
from anthropic.types import MessageParam
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import ResponseInputParam
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from memsvc.context import BARE, ContextBudgetTooSmall
from memsvc.render import Format
from memsvc.tokens import REPLY_PRIMING, TokenCounter, load_counter
from tests.contexts import Session, call, chat, ids, sent


@pytest.fixture(scope='module')
def counter() -> TokenCounter:
    return load_counter('o200k_base')


def test_openai_rendering(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'system', 'content': 'sys', 'metadata': {'x': 1}},
        {'role': 'user', 'content': 'hi', 'name': 'ann'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call('c1')]},
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1', 'name': 'get_weather'},
    )
    window = session.context()
    assert sent(window) == [
        {'role': 'system', 'content': 'sys'},
        {'role': 'user', 'content': 'hi', 'name': 'ann'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call('c1')]},
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1'},
    ]
    assert window.tokens == REPLY_PRIMING + sum(map(counter.message, sent(window)))
    assert orjson.loads(window.to_json()) == {
        'format': 'openai',
        'messages': sent(window),
        'tokens': window.tokens,
        'dropped': 0,
        'first_id': 1,
        'summary': False,
    }


def test_responses_rendering(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'developer', 'content': 'dev'},
        {'role': 'user', 'content': 'weather?'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call('c1'), call('c2', 'get_time', '{}')]},
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1'},
        {'role': 'tool', 'content': '14:02', 'tool_call_id': 'c2'},
        {'role': 'assistant', 'content': 'Checking once more.', 'tool_calls': [call('c3')]},
        {'role': 'tool', 'content': 'still sunny', 'tool_call_id': 'c3'},
    )
    window = session.context(summary=session.summary('Earlier: greetings.', 0), format='responses')
    assert sent(window) == [
        {'type': 'message', 'role': 'developer', 'content': 'dev'},
        {'type': 'message', 'role': 'system', 'content': 'Earlier: greetings.'},
        {'type': 'message', 'role': 'user', 'content': 'weather?'},
        {'type': 'function_call', 'call_id': 'c1', 'name': 'get_weather', 'arguments': '{"city": "Paris"}'},
        {'type': 'function_call', 'call_id': 'c2', 'name': 'get_time', 'arguments': '{}'},
        {'type': 'function_call_output', 'call_id': 'c1', 'output': 'sunny'},
        {'type': 'function_call_output', 'call_id': 'c2', 'output': '14:02'},
        {'type': 'message', 'role': 'assistant', 'content': 'Checking once more.'},
        {'type': 'function_call', 'call_id': 'c3', 'name': 'get_weather', 'arguments': '{"city": "Paris"}'},
        {'type': 'function_call_output', 'call_id': 'c3', 'output': 'still sunny'},
    ]
    assert window.tokens == session.context(summary=session.summary('Earlier: greetings.', 0)).tokens


def test_anthropic_rendering(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'system', 'content': 'sys'},
        {'role': 'developer', 'content': 'dev'},
        {'role': 'user', 'content': 'weather?'},
        {'role': 'user', 'content': 'in Paris'},
        {
            'role': 'assistant',
            'content': 'Looking.',
            'tool_calls': [call('c1'), call('c2', 'broken', '{"city": '), call('c3', 'list', '[1, 2]')],
        },
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1'},
        {'role': 'tool', 'content': 'error', 'tool_call_id': 'c2'},
        {'role': 'tool', 'content': 'ok', 'tool_call_id': 'c3'},
        {'role': 'user', 'content': 'and tomorrow?'},
        {'role': 'system', 'content': 'mid-conversation instruction'},
        {'role': 'assistant', 'content': 'Rain.', 'tool_calls': [call('c4', 'noargs', '')]},
    )
    summary = session.summary('summary text', 0)
    window = session.context(summary=summary, format='anthropic')
    assert window.system == 'sys\n\ndev\n\nsummary text\n\nmid-conversation instruction'
    assert sent(window) == [
        {'role': 'user', 'content': [{'type': 'text', 'text': 'weather?'}, {'type': 'text', 'text': 'in Paris'}]},
        {
            'role': 'assistant',
            'content': [
                {'type': 'text', 'text': 'Looking.'},
                {'type': 'tool_use', 'id': 'c1', 'name': 'get_weather', 'input': {'city': 'Paris'}},
                {'type': 'tool_use', 'id': 'c2', 'name': 'broken', 'input': {'_raw': '{"city": '}},
                {'type': 'tool_use', 'id': 'c3', 'name': 'list', 'input': {'_raw': '[1, 2]'}},
            ],
        },
        {
            'role': 'user',
            'content': [
                {'type': 'tool_result', 'tool_use_id': 'c1', 'content': 'sunny'},
                {'type': 'tool_result', 'tool_use_id': 'c2', 'content': 'error'},
                {'type': 'tool_result', 'tool_use_id': 'c3', 'content': 'ok'},
                {'type': 'text', 'text': 'and tomorrow?'},
            ],
        },
        {
            'role': 'assistant',
            'content': [
                {'type': 'text', 'text': 'Rain.'},
                {'type': 'tool_use', 'id': 'c4', 'name': 'noargs', 'input': {}},
            ],
        },
    ]
    others = session.tokens(*range(3, 10), 11)
    assert window.tokens == REPLY_PRIMING + counter.text(window.system) + others
    assert orjson.loads(window.to_json())['system'] == window.system


@pytest.mark.parametrize(
    'instructions',
    [
        [{'role': 'system', 'content': 'You are a helpful assistant. Answer briefly.'}],
        [{'role': 'developer', 'content': 'Answer in English.', 'name': 'policy'}],
        [{'role': 'system', 'content': 'One.'}, {'role': 'developer', 'content': '\nTwo: trailing space '}],
    ],
)
def test_anthropic_counts_its_system_string_as_the_text_it_is(
    counter: TokenCounter, instructions: list[dict[str, Any]]
) -> None:
    session = Session(counter, *instructions, {'role': 'user', 'content': 'Hello there!'})
    for summary in (None, session.summary('Earlier, they said hello.', 0)):
        window = session.context(summary=summary, format='anthropic')
        assert window.system is not None
        assert window.tokens == REPLY_PRIMING + counter.text(window.system) + session.tokens(len(instructions) + 1)


def test_anthropic_keeps_the_budget_with_its_system_text(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'system', 'content': 'sys'},
        *({'role': role, 'content': f'turn {i}'} for i, role in enumerate(['user', 'assistant'] * 20)),
    )
    for budget in range(REPLY_PRIMING + session.tokens(1), REPLY_PRIMING + session.tokens(*range(1, 42)) + 2):
        for format in get_args(Format):
            assert session.context(budget, format=format).tokens <= budget


def test_anthropic_never_starts_with_an_assistant_turn(counter: TokenCounter) -> None:
    session = Session(
        counter,
        {'role': 'system', 'content': 'sys'},
        {'role': 'user', 'content': 'What is the weather in Paris?'},  # 2
        {'role': 'assistant', 'content': 'Looking.', 'tool_calls': [call('c1')]},  # 3
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1'},  # 4
        {'role': 'system', 'content': 'be brief'},  # 5
        {'role': 'assistant', 'content': 'Sunny.'},  # 6
        {'role': 'user', 'content': 'Thanks!'},  # 7
        {'role': 'assistant', 'content': 'You are welcome.'},  # 8
    )
    # the budget cuts between 2 and its answer: 3 to 6 (a unit, a system text, an answer) go before the user's 7
    budget = REPLY_PRIMING + session.tokens(1, *range(3, 9))
    openai = session.context(budget, format='memsvc')
    assert (ids(openai), openai.dropped, openai.first_id) == ([1, 3, 4, 5, 6, 7, 8], 1, 1)
    window = session.context(budget, format='anthropic')
    assert window.system == 'sys'
    assert [turn['role'] for turn in sent(window)] == ['user', 'assistant']
    assert sent(window)[0]['content'] == [{'type': 'text', 'text': 'Thanks!'}]
    assert (window.dropped, window.first_id) == (5, 1)
    assert window.tokens == REPLY_PRIMING + counter.text('sys') + session.tokens(7, 8)
    # the summary covers the question: its answer goes too
    summarized = session.context(summary=session.summary('Asked about the weather.', 2), format='anthropic')
    assert [turn['role'] for turn in sent(summarized)] == ['user', 'assistant']
    assert summarized.system == 'sys\n\nAsked about the weather.'
    # without a pinned run, first_id is the first message kept
    bare = Session(counter, *session_messages(session)[1:])
    cut = bare.context(REPLY_PRIMING + bare.tokens(*range(2, 8)), format='anthropic')
    assert (cut.first_id, cut.dropped) == (6, 5)
    # a system text right before a user turn stays
    kept = Session(counter, {'role': 'system', 'content': 'a'}, {'role': 'user', 'content': 'b'})
    assert kept.context(format='anthropic').dropped == 0


def session_messages(session: Session) -> list[dict[str, Any]]:
    messages = [orjson.loads(raw) for raw, _ in session.stored]
    for message in messages:
        del message['id'], message['timestamp']
    return messages


def test_memsvc_rendering_is_the_stored_bytes(counter: TokenCounter) -> None:
    session = chat(counter)
    window = session.context(summary=session.summary('s', 3), format='memsvc')
    body = window.to_json()
    for raw, _ in session.stored[3:]:
        assert raw in body
    assert orjson.loads(body)['messages'][2] == {'role': 'system', 'content': 's'}


STRICT = ConfigDict(extra='forbid', strict=True)
OPENAI_MESSAGES = TypeAdapter(list[ChatCompletionMessageParam], config=STRICT)
RESPONSES_INPUT = TypeAdapter(ResponseInputParam, config=STRICT)
ANTHROPIC_MESSAGES = TypeAdapter(list[MessageParam], config=STRICT)


class NotAParam(Exception):
    """A value the SDK accepted only as one of its response models (whose extra keys pass), not as a request
    param: the anthropic SDK's content unions include its lenient `TextBlock` model."""


def walked(value: Any) -> Any:
    if isinstance(value, BaseModel):
        raise NotAParam(value)
    if isinstance(value, dict):
        return {key: walked(item) for key, item in value.items()}
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Iterable):
        return [walked(item) for item in value]
    return value


def validate(format: Format, payload: dict[str, Any]) -> None:
    """Validate the JSON a gateway receives as the SDK's `messages=` / `input=` / `system=`."""
    match format:
        case 'openai':
            walked(OPENAI_MESSAGES.validate_python(payload['messages']))
        case 'responses':
            walked(RESPONSES_INPUT.validate_python(payload['messages']))
        case 'anthropic':
            walked(ANTHROPIC_MESSAGES.validate_python(payload['messages']))
            assert isinstance(payload.get('system', ''), str)
        case 'memsvc':
            assert all('role' in message and 'content' in message for message in payload['messages'])


@pytest.mark.parametrize('format', get_args(Format))
def test_every_format_validates_as_the_provider_sdks_request(counter: TokenCounter, format: Format) -> None:
    session = Session(
        counter,
        {'role': 'system', 'content': 'sys'},
        {'role': 'user', 'content': 'weather?', 'name': 'ann'},
        {'role': 'assistant', 'content': '', 'tool_calls': [call('c1'), call('c2', 'bad', 'not json')]},
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1', 'name': 'get_weather'},
        {'role': 'tool', 'content': 'error', 'tool_call_id': 'c2'},
        {'role': 'developer', 'content': 'be brief'},
        {'role': 'assistant', 'content': 'Sunny.', 'metadata': {'model': 'x'}},
    )
    validate(format, orjson.loads(session.context(summary=session.summary('s', 0), format=format).to_json()))


@pytest.mark.parametrize(
    ('format', 'wrong'),
    [
        ('openai', {'role': 'tool', 'content': 'sunny'}),  # no tool_call_id
        ('openai', {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c1', 'name': 'f'}),  # tools take no name
        ('openai', {'role': 'assistant', 'content': '', 'tool_calls': [call('c1') | {'function': {'name': 'f'}}]}),
        ('responses', {'type': 'function_call', 'call_id': 'c1', 'name': 'f', 'arguments': {'city': 'Paris'}}),
        ('responses', {'type': 'function_call_output', 'call_id': 'c1', 'content': 'sunny'}),
        ('anthropic', {'role': 'user', 'content': [{'type': 'tool_use', 'id': 'c1', 'name': 'f', 'input': 'x'}]}),
        ('anthropic', {'role': 'user', 'content': [{'type': 'tool_result', 'tool_call_id': 'c1', 'content': 'x'}]}),
        ('anthropic', {'role': 'tool', 'content': 'sunny'}),
        ('anthropic', {'role': 'assistant', 'content': [{'type': 'text', 'text': 'x', 'name': 'ann'}]}),
    ],
)
def test_the_validation_rejects_a_wrong_shape(format: Format, wrong: dict[str, Any]) -> None:
    with pytest.raises((ValidationError, NotAParam)):
        validate(format, {'messages': [wrong]})


ROLES = st.sampled_from(['user', 'assistant', 'system', 'developer'])
TEXT = st.text(max_size=30)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A pinned run, then plain turns, tool units (some with missing results) and stray tool messages."""
    messages: list[dict[str, Any]] = [
        {'role': draw(st.sampled_from(['system', 'developer'])), 'content': draw(TEXT)}
        for _ in range(draw(st.integers(0, 2)))
    ]
    for n in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(['plain', 'plain', 'unit', 'stray']))
        if kind == 'plain':
            messages.append({'role': draw(ROLES), 'content': draw(TEXT)})
        elif kind == 'unit':
            calls = [call(f'c{n}.{i}', 'f', draw(TEXT)) for i in range(draw(st.integers(1, 3)))]
            messages.append({'role': 'assistant', 'content': draw(TEXT), 'tool_calls': calls})
            for made in calls[: draw(st.integers(0, len(calls)))]:
                messages.append({'role': 'tool', 'content': draw(TEXT), 'tool_call_id': made['id']})
        else:
            messages.append({'role': 'tool', 'content': draw(TEXT), 'tool_call_id': 'gone'})
    return messages


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    conversation=conversations(),
    budget=st.none() | st.integers(1, 400),
    through=st.none() | st.integers(0, 40),
)
def test_any_window_fits_its_budget_and_never_orphans_a_tool_result(
    counter: TokenCounter, conversation: list[dict[str, Any]], budget: int | None, through: int | None
) -> None:
    session = Session(counter, *conversation)
    summary = None if through is None else session.summary('the story so far', through)
    fixed = session.tokens(*range(1, len(session.pinned) + 1)) + (summary.tokens if summary else 0)
    if budget is not None and fixed and fixed + REPLY_PRIMING > budget:
        with pytest.raises(ContextBudgetTooSmall):
            session.context(budget, summary)
        return
    decoded = Session(counter)  # the same records without BARE: every message decoded, none copied as bytes
    decoded.stored, decoded.pinned = (
        [(raw, value & ~BARE) for raw, value in part] for part in (session.stored, session.pinned)
    )
    for format in get_args(Format):
        window = session.context(budget, summary, format)
        payload = orjson.loads(window.to_json())
        assert payload == orjson.loads(decoded.context(budget, summary, format).to_json())
        validate(format, payload)
        assert budget is None or window.tokens <= budget
        assert payload['summary'] is (summary is not None)
    openai = session.context(budget, summary)
    assert openai.tokens == (REPLY_PRIMING + sum(map(counter.message, sent(openai))) if sent(openai) else 0)
    stored = session.context(budget, summary, 'memsvc')
    kept = ids(stored)
    assert stored.dropped == len(session.stored) - len(kept)
    assert stored.first_id == (kept[0] if kept else None)
    after_pinned = kept[len(session.pinned) :]
    assert all(through is None or kept_id > through for kept_id in after_pinned)
    anthropic = session.context(budget, summary, 'anthropic')
    assert not sent(anthropic) or sent(anthropic)[0]['role'] == 'user'
    roles = [m['role'] for m in sent(openai)]
    for i, role in enumerate(roles):
        if role == 'tool':  # answers the assistant call right before it, or follows another answer
            assert i > 0
            previous = sent(openai)[i - 1]
            assert previous['role'] == 'tool' or 'tool_calls' in previous
