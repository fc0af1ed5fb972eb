"""The context window and the summary over HTTP (SPEC-2 §1), on every store. Every reply is checked against the
OpenAPI document. Token figures are computed here with the same counter, from the messages as sent: the window's
`tokens` is the sum of its messages' counts and the reply's priming."""

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.settings import Settings
from memsvc.tokens import REPLY_PRIMING, TokenCounter, shared_counter
from tests.conformance import CheckedClient, Conformance
from tests.conftest import STORE_KINDS
from tests.helpers import API

FAST_KINDS = [kind for kind in STORE_KINDS if not kind.startswith('chroma')]  # the chroma kinds run the main tests
fast = pytest.mark.parametrize('store_kind', FAST_KINDS)

SYSTEM: dict[str, Any] = {'role': 'system', 'content': 'You are terse.'}
QUESTION: dict[str, Any] = {'role': 'user', 'content': 'What is the weather in Paris?'}
CALLS: dict[str, Any] = {
    'role': 'assistant',
    'content': '',
    'tool_calls': [
        {'id': 'c1', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}},
        {'id': 'c2', 'type': 'function', 'function': {'name': 'get_time', 'arguments': '{}'}},
    ],
}
WEATHER: dict[str, Any] = {'role': 'tool', 'content': 'sunny, 21 degrees', 'tool_call_id': 'c1'}
TIME: dict[str, Any] = {'role': 'tool', 'content': '14:02', 'tool_call_id': 'c2'}
ANSWER: dict[str, Any] = {'role': 'assistant', 'content': 'Sunny and 21 degrees at 14:02.'}
FOLLOW_UP: dict[str, Any] = {'role': 'user', 'content': 'Thanks! And tomorrow?', 'name': 'ana'}
CHAT = [SYSTEM, QUESTION, CALLS, WEATHER, TIME, ANSWER, FOLLOW_UP]  # ids 1 to 7
SUMMARY = 'The user asked about the weather in Paris.'


@pytest.fixture(scope='module')
def o200k() -> TokenCounter:
    return shared_counter('o200k_base')


def tokens(counter: TokenCounter, *messages: dict[str, Any]) -> int:
    return sum(counter.message(message) for message in messages)


async def chat(client: CheckedClient, session_id: str = 'chat', headers: dict[str, str] | None = None) -> None:
    reply = await client.post(f'{API}/sessions/{session_id}/messages', json=CHAT, headers=headers)
    assert reply.status == 201, reply.body


async def context(client: CheckedClient, session_id: str = 'chat', **query: Any) -> dict[str, Any]:
    reply = await client.get(f'{API}/sessions/{session_id}/context', params={k: str(v) for k, v in query.items()})
    assert reply.status == 200, reply.body
    answer: dict[str, Any] = reply.json()
    return answer


# --- the formats -----------------------------------------------------------------------------


async def test_openai_window_of_a_chat_with_tools_and_a_summary(client: CheckedClient, o200k: TokenCounter) -> None:
    await chat(client)
    whole = await context(client)
    assert whole == {
        'format': 'openai',
        'messages': [SYSTEM, QUESTION, CALLS, WEATHER, TIME, ANSWER, FOLLOW_UP],
        'tokens': tokens(o200k, *CHAT) + REPLY_PRIMING,
        'dropped': 0,
        'first_id': 1,
        'summary': False,
    }
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 3})).status == 200
    summarized = await context(client, max_tokens=4000)
    summary_message = {'role': 'system', 'content': SUMMARY}
    # 2 and 3 are covered; 4 and 5 answer a call the summary covers: left out too
    assert summarized['messages'] == [SYSTEM, summary_message, ANSWER, FOLLOW_UP]
    assert summarized['tokens'] == tokens(o200k, SYSTEM, summary_message, ANSWER, FOLLOW_UP) + REPLY_PRIMING
    assert (summarized['dropped'], summarized['first_id'], summarized['summary']) == (4, 1, True)


@fast
async def test_responses_window(client: CheckedClient, o200k: TokenCounter) -> None:
    await chat(client)
    answer = await context(client, format='responses')
    assert answer['messages'] == [
        {'type': 'message', 'role': 'system', 'content': 'You are terse.'},
        {'type': 'message', 'role': 'user', 'content': 'What is the weather in Paris?'},
        {'type': 'function_call', 'call_id': 'c1', 'name': 'get_weather', 'arguments': '{"city": "Paris"}'},
        {'type': 'function_call', 'call_id': 'c2', 'name': 'get_time', 'arguments': '{}'},
        {'type': 'function_call_output', 'call_id': 'c1', 'output': 'sunny, 21 degrees'},
        {'type': 'function_call_output', 'call_id': 'c2', 'output': '14:02'},
        {'type': 'message', 'role': 'assistant', 'content': 'Sunny and 21 degrees at 14:02.'},
        {'type': 'message', 'role': 'user', 'content': 'Thanks! And tomorrow?'},
    ]
    assert answer['tokens'] == tokens(o200k, *CHAT) + REPLY_PRIMING
    assert 'system' not in answer


@fast
async def test_anthropic_window_merges_turns_and_moves_system_text(client: CheckedClient, o200k: TokenCounter) -> None:
    await chat(client)
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 1})).status == 200
    answer = await context(client, format='anthropic')
    assert answer['system'] == f'You are terse.\n\n{SUMMARY}'
    assert answer['messages'] == [
        {'role': 'user', 'content': [{'type': 'text', 'text': 'What is the weather in Paris?'}]},
        {
            'role': 'assistant',
            'content': [
                {'type': 'tool_use', 'id': 'c1', 'name': 'get_weather', 'input': {'city': 'Paris'}},
                {'type': 'tool_use', 'id': 'c2', 'name': 'get_time', 'input': {}},
            ],
        },
        {
            'role': 'user',
            'content': [
                {'type': 'tool_result', 'tool_use_id': 'c1', 'content': 'sunny, 21 degrees'},
                {'type': 'tool_result', 'tool_use_id': 'c2', 'content': '14:02'},
            ],
        },
        {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Sunny and 21 degrees at 14:02.'}]},
        {'role': 'user', 'content': [{'type': 'text', 'text': 'Thanks! And tomorrow?'}]},
    ]
    assert answer['tokens'] == o200k.text(answer['system']) + tokens(o200k, *CHAT[1:]) + REPLY_PRIMING
    assert (answer['dropped'], answer['first_id'], answer['summary']) == (0, 1, True)


@fast
async def test_anthropic_keeps_arguments_that_are_not_json_as_raw(client: CheckedClient) -> None:
    broken = {'id': 'c9', 'type': 'function', 'function': {'name': 'run', 'arguments': '{"cmd": ls'}}
    sent = [
        {'role': 'user', 'content': 'list it'},
        {'role': 'assistant', 'content': '', 'tool_calls': [broken]},
        {'role': 'tool', 'content': 'ok', 'tool_call_id': 'c9'},
    ]
    assert (await client.post(f'{API}/sessions/raw/messages', json=sent)).status == 201
    answer = await context(client, 'raw', format='anthropic')
    assert answer['messages'][1]['content'] == [
        {'type': 'tool_use', 'id': 'c9', 'name': 'run', 'input': {'_raw': '{"cmd": ls'}}
    ]


@fast
async def test_memsvc_window_is_the_stored_messages(client: CheckedClient) -> None:
    await chat(client)
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 5})).status == 200
    stored = (await client.get(f'{API}/sessions/chat/messages')).json()
    answer = await context(client, format='memsvc')
    assert answer['messages'] == [stored[0], {'role': 'system', 'content': SUMMARY}, *stored[5:]]
    assert (answer['dropped'], answer['first_id']) == (4, 1)


@fast
async def test_cl100k_counts_on_read(client: CheckedClient) -> None:
    await chat(client)
    cl100k = shared_counter('cl100k_base')
    assert (await context(client, encoding='cl100k_base'))['tokens'] == tokens(cl100k, *CHAT) + REPLY_PRIMING


# --- the budget ------------------------------------------------------------------------------


@fast
async def test_a_tool_unit_is_kept_or_dropped_whole(client: CheckedClient, o200k: TokenCounter) -> None:
    await chat(client)
    pinned, tail, unit = tokens(o200k, SYSTEM), tokens(o200k, ANSWER, FOLLOW_UP), tokens(o200k, CALLS, WEATHER, TIME)
    exact = pinned + tail + unit + REPLY_PRIMING
    kept = await context(client, max_tokens=exact)
    assert kept['messages'] == [SYSTEM, CALLS, WEATHER, TIME, ANSWER, FOLLOW_UP]
    assert (kept['tokens'], kept['dropped'], kept['first_id']) == (exact, 1, 1)
    # one token short: the whole unit goes, the window never starts with a tool result
    short = await context(client, max_tokens=exact - 1)
    assert short['messages'] == [SYSTEM, ANSWER, FOLLOW_UP]
    assert short['tokens'] == pinned + tail + REPLY_PRIMING <= exact - 1
    assert (short['dropped'], short['first_id']) == (4, 1)
    for format in ('responses', 'anthropic', 'memsvc'):
        answer = await context(client, max_tokens=exact - 1, format=format)
        assert answer['tokens'] <= exact - 1
        # anthropic: the answer would open the turns, which the Messages API refuses: it goes too
        assert answer['dropped'] == (5 if format == 'anthropic' else 4)


@fast
async def test_without_a_system_prompt_first_id_is_the_oldest_kept(client: CheckedClient, o200k: TokenCounter) -> None:
    assert (await client.post(f'{API}/sessions/plain/messages', json=CHAT[1:])).status == 201
    budget = tokens(o200k, FOLLOW_UP) + REPLY_PRIMING
    answer = await context(client, 'plain', max_tokens=budget, format='memsvc')
    assert [message['id'] for message in answer['messages']] == [6]
    assert (answer['tokens'], answer['dropped'], answer['first_id']) == (budget, 5, 6)
    nothing = await context(client, 'plain', max_tokens=budget - 1)
    assert (nothing['messages'], nothing['tokens'], nothing['dropped'], nothing['first_id']) == ([], 0, 6, None)


@fast
async def test_pinned_messages_larger_than_the_budget_are_422_with_the_tokens_they_need(
    client: CheckedClient, o200k: TokenCounter
) -> None:
    await chat(client)
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 7})).status == 200
    needed = o200k.message(SYSTEM) + o200k.system(SUMMARY) + REPLY_PRIMING
    assert (await context(client, max_tokens=needed))['messages'] == [SYSTEM, {'role': 'system', 'content': SUMMARY}]
    reply = await client.get(f'{API}/sessions/chat/context', params={'max_tokens': str(needed - 1)})
    assert reply.status == 422
    assert reply.error_code == 'context_budget_too_small'
    assert f'need {needed} tokens' in reply.json()['error']['message']


@fast
async def test_a_long_session_is_read_in_pages(client: CheckedClient, o200k: TokenCounter) -> None:
    history = [SYSTEM] + [{'role': 'user' if n % 2 else 'assistant', 'content': f'message {n}'} for n in range(1, 300)]
    for start in range(0, len(history), 100):
        assert (await client.post(f'{API}/sessions/long/messages', json=history[start : start + 100])).status == 201
    each = o200k.message(history[-1])
    budget = o200k.message(SYSTEM) + 250 * each + REPLY_PRIMING  # far more than the first read's messages
    answer = await context(client, 'long', max_tokens=budget, format='memsvc')
    ids = [message['id'] for message in answer['messages']]
    assert ids == [1, *range(51, 301)]
    assert (answer['tokens'], answer['dropped'], answer['first_id']) == (budget, 49, 1)


@fast
@pytest.mark.parametrize(
    ('name', 'value'),
    [
        ('max_tokens', '0'),
        ('max_tokens', '2000001'),
        ('max_tokens', '-5'),
        ('max_tokens', '12k'),
        ('format', 'gemini'),
        ('format', ''),
        ('encoding', 'p50k_base'),
    ],
)
async def test_bad_parameters_are_400_never_clamped(client: CheckedClient, name: str, value: str) -> None:
    await chat(client)
    reply = await client.get(f'{API}/sessions/chat/context', params={name: value})
    assert reply.status == 400
    assert reply.error_code == 'invalid_parameter'
    assert reply.json()['error']['message'].startswith(f'{name}:')


@fast
async def test_context_of_an_unknown_session_is_404(client: CheckedClient) -> None:
    reply = await client.get(f'{API}/sessions/nobody/context', params={'max_tokens': '2000000'})
    assert (reply.status, reply.error_code) == (404, 'session_not_found')
    assert (await client.get(f'{API}/sessions/bad%20id/context')).status == 400
    twice = await client.get(f'{API}/sessions/nobody/context?format=openai&format=openai')
    assert (twice.status, twice.error_code) == (400, 'invalid_parameter')


# --- the summary -----------------------------------------------------------------------------


async def test_summary_round_trip_versions_and_preconditions(client: CheckedClient) -> None:
    await chat(client)
    before = (await client.get(f'{API}/sessions/chat')).headers['ETag']
    put = await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 3})
    assert put.status == 200
    assert set(put.json()) == {'content', 'through_id', 'updated_at'}
    assert (put.json()['content'], put.json()['through_id']) == (SUMMARY, 3)
    assert put.headers['ETag'] == f'"{int(before.strip(chr(34))) + 1}"'
    assert (await client.get(f'{API}/sessions/chat')).headers['ETag'] == put.headers['ETag']
    assert (await client.get(f'{API}/sessions/chat/summary')).json() == put.json()
    stale = await client.put(
        f'{API}/sessions/chat/summary', json={'content': 'x', 'through_id': 1}, headers={'If-Match': before}
    )
    assert (stale.status, stale.error_code) == (412, 'precondition_failed')
    deleted = await client.delete(f'{API}/sessions/chat/summary', headers={'If-Match': put.headers['ETag']})
    assert (deleted.status, deleted.json()) == (200, {'success': True})
    missing = await client.get(f'{API}/sessions/chat/summary')
    assert (missing.status, missing.error_code) == (404, 'summary_not_found')
    again = await client.delete(f'{API}/sessions/chat/summary')
    assert (again.status, again.error_code) == (404, 'summary_not_found')


@fast
async def test_summary_put_is_idempotent_under_a_key(client: CheckedClient) -> None:
    await chat(client)
    key = {'Idempotency-Key': 'summary-1'}
    body = {'content': SUMMARY, 'through_id': 3}
    first = await client.put(f'{API}/sessions/chat/summary', json=body, headers=key)
    retry = await client.put(f'{API}/sessions/chat/summary', json=body, headers=key)
    assert (retry.status, retry.body, retry.headers['ETag']) == (200, first.body, first.headers['ETag'])
    assert (await client.get(f'{API}/sessions/chat')).headers['ETag'] == first.headers['ETag']
    other = await client.put(f'{API}/sessions/chat/summary', json={**body, 'through_id': 4}, headers=key)
    assert (other.status, other.error_code) == (422, 'idempotency_key_reused')
    delete_key = {'Idempotency-Key': 'summary-delete-1'}
    gone = await client.delete(f'{API}/sessions/chat/summary', headers=delete_key)
    replayed = await client.delete(f'{API}/sessions/chat/summary', headers=delete_key)
    assert (replayed.status, replayed.headers['ETag']) == (200, gone.headers['ETag'])


@fast
async def test_summary_errors(client: CheckedClient) -> None:
    unknown = await client.put(f'{API}/sessions/nobody/summary', json={'content': SUMMARY, 'through_id': 1})
    assert (unknown.status, unknown.error_code) == (404, 'session_not_found')
    for method in ('GET', 'DELETE'):
        reply = await client.request(method, f'{API}/sessions/nobody/summary')
        assert (reply.status, reply.error_code) == (404, 'session_not_found'), method
    await chat(client)
    beyond = await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 8})
    assert (beyond.status, beyond.error_code) == (422, 'through_id_not_stored')
    for body in ({'content': SUMMARY}, {'content': SUMMARY, 'through_id': 0}, {'content': 1, 'through_id': 1}):
        reply = await client.put(f'{API}/sessions/chat/summary', json=body)
        assert (reply.status, reply.error_code) == (422, 'validation_error'), body
    assert (await client.get(f'{API}/sessions/chat/summary')).status == 404


@fast
async def test_summary_goes_with_clear_and_with_the_session(client: CheckedClient) -> None:
    await chat(client)
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 2})).status == 200
    assert (await client.delete(f'{API}/sessions/chat/messages')).status == 200
    cleared = await client.get(f'{API}/sessions/chat/summary')
    assert (cleared.status, cleared.error_code) == (404, 'summary_not_found')
    assert (await context(client))['summary'] is False
    await chat(client)  # ids 8 to 14
    assert (await client.put(f'{API}/sessions/chat/summary', json={'content': SUMMARY, 'through_id': 9})).status == 200
    assert (await client.delete(f'{API}/sessions/chat')).status == 200
    gone = await client.get(f'{API}/sessions/chat/summary')
    assert (gone.status, gone.error_code) == (404, 'session_not_found')
    await chat(client)
    assert (await client.get(f'{API}/sessions/chat/summary')).error_code == 'summary_not_found'


@fast
async def test_summary_and_context_are_tenant_scoped(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    configured = Settings(**{**settings.model_dump(), 'api_keys': 'alice=key-of-alice,bob=key-of-bob'})
    client = CheckedClient(await aiohttp_client(create_app(configured)), Conformance.for_settings(configured))
    alice, bob = {'Authorization': 'Bearer key-of-alice'}, {'Authorization': 'Bearer key-of-bob'}
    await chat(client, headers=alice)
    summary = {'content': SUMMARY, 'through_id': 2}
    assert (await client.put(f'{API}/sessions/chat/summary', json=summary, headers=alice)).status == 200
    for method in ('GET', 'DELETE'):
        assert (await client.request(method, f'{API}/sessions/chat/summary', headers=bob)).status == 404
    assert (await client.put(f'{API}/sessions/chat/summary', json=summary, headers=bob)).status == 404
    assert (await client.get(f'{API}/sessions/chat/context', headers=bob)).status == 404
    assert (await client.get(f'{API}/sessions/chat/summary', headers=alice)).status == 200
