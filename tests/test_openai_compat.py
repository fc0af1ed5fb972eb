"""OpenAI's Conversations API under `/v1`, driven by the real clients against a real `memsvc serve`: the `openai`
package, sync and async, for every method and error class, the Agents SDK's `OpenAIConversationsSession`, and the
round trip between `/v1` and `/api/v1/chat`. One server per store for the whole module."""

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests
from agents.memory import OpenAIConversationsSession
from openai import AsyncOpenAI, OpenAI

from tests.servers import RedisServer, clean_env, free_port, wait_until_serving

KEY, OTHER_KEY = 'key-alpha', 'key-beta'
MAX_MESSAGES = 300
"""The server refuses appends past this many messages (`on_full_session=reject`): the 409 test fills one."""
API = '/api/v1/chat'


@dataclass
class Served:
    url: str
    store: str
    redis: RedisServer | None
    clients: list[OpenAI] = field(default_factory=list)
    """The blocking clients the tests made, closed when the server stops: a client dropped with its connections
    open would have them reported (ResourceWarning) in whichever later test the garbage collector runs."""

    def client(self, key: str = KEY, **options: Any) -> OpenAI:
        client = OpenAI(base_url=self.url + '/v1', api_key=key, **options)
        self.clients.append(client)
        return client

    def async_client(self, key: str = KEY, **options: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + '/v1', api_key=key, **options)

    def native(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {'Authorization': f'Bearer {KEY}', **kwargs.pop('headers', {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture(scope='module', params=['in_memory', 'redis'])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`memsvc serve` with two tenants; on redis, a Redis of this module's own, so that a test can pause it."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        env = clean_env(
            MEMORY_TYPE=request.param,
            MEMSVC_API_KEYS=f'alpha={KEY},beta={OTHER_KEY}',
            MEMSVC_MAX_MESSAGES_PER_SESSION=str(MAX_MESSAGES),
            MEMSVC_ON_FULL_SESSION='reject',
            MEMSVC_STORE_TIMEOUT_SECONDS='1',
        )
        redis = None
        if request.param == 'redis':
            redis = RedisServer.start(Path(tmp_path_factory.mktemp('v1-redis')))
            stack.callback(redis.stop, kill=True)
            env.update(REDIS_URL=redis.url)
        # The log goes to a file, not a pipe: a pipe nobody reads while the tests run would stall the server once full.
        log_path = tmp_path_factory.mktemp('v1-serve') / 'serve.log'
        log_file = stack.enter_context(log_path.open('wb'))
        process = subprocess.Popen(
            [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)], env=env, stderr=log_file
        )
        served = Served(f'http://127.0.0.1:{port}', request.param, redis)
        try:
            wait_until_serving(port, process)
            yield served
        finally:
            for client in served.clients:
                client.close()
            process.terminate()
            assert process.wait(timeout=15) == 0
            log = log_path.read_bytes()
            assert b'Traceback' not in log, log.decode(errors='replace')[-3000:]


def _text(n: int) -> Any:
    return {'role': 'user' if n % 2 == 0 else 'assistant', 'content': f'message {n}'}


ITEMS: list[Any] = [
    {'type': 'message', 'role': 'user', 'content': 'a plain string'},
    {'role': 'user', 'content': [{'type': 'input_text', 'text': 'no type, a role'}]},
    {'type': 'message', 'role': 'system', 'content': 'be brief'},
    {'type': 'message', 'role': 'developer', 'content': [{'type': 'input_text', 'text': 'use tools'}]},
    {
        'id': 'msg_from_openai',
        'type': 'message',
        'role': 'assistant',
        'status': 'completed',
        'content': [{'type': 'output_text', 'text': 'Let me look.', 'annotations': [], 'logprobs': []}],
    },
    {'type': 'function_call', 'call_id': 'call_1', 'name': 'weather', 'arguments': '{"city":"Oslo"}'},
    {'type': 'function_call_output', 'call_id': 'call_1', 'output': '4 degrees'},
]
"""Items that map onto plain messages: read back as the messages alone answer them."""
KEPT: list[Any] = [
    {'type': 'reasoning', 'summary': [{'type': 'summary_text', 'text': 'thinking'}], 'encrypted_content': 'xyz'},
    {
        'type': 'message',
        'role': 'user',
        'content': [
            {'type': 'input_text', 'text': 'What is '},
            {'type': 'input_text', 'text': 'in this picture?'},
            {'type': 'input_image', 'image_url': 'data:image/png;base64,iVBORw0KGgo=', 'detail': 'low'},
        ],
    },
    {
        'type': 'message',
        'role': 'assistant',
        'phase': 'final_answer',
        'content': [{'type': 'output_text', 'text': 'A cat.', 'annotations': []}],
    },
    {'type': 'function_call_output', 'call_id': 'call_2', 'output': [{'type': 'input_text', 'text': 'rows: 3'}]},
]
"""Items that a message alone cannot answer again: kept as sent."""


def _texts(items: Any) -> list[str]:
    """The text of each message item (of a page, a list, or what a paginator yields)."""
    return [item.content[0].text for item in items]


def _any(value: Any) -> Any:
    """`value` as the SDK's parameters take it: items its types do not allow, on purpose."""
    return value


def _dump(item: Any) -> dict[str, Any]:
    dumped = item.model_dump(exclude_unset=True, by_alias=True)
    assert isinstance(dumped, dict)
    return dumped


# --- conversations -------------------------------------------------------------------------------------------


def test_create_retrieve_update_delete(served: Served) -> None:
    client = served.client()
    created = client.conversations.create(metadata={'user_id': 'u1', 'topic': 'x'}, items=[_text(0), _text(1)])
    assert created.object == 'conversation'
    assert created.metadata == {'user_id': 'u1', 'topic': 'x'}
    assert isinstance(created.created_at, int)
    assert client.conversations.retrieve(created.id) == created
    updated = client.conversations.update(created.id, metadata={'user_id': 'u2'})
    assert updated.metadata == {'user_id': 'u2'}, 'an update replaces the metadata'
    assert client.conversations.update(created.id, metadata=None).metadata == {}
    assert [item.id for item in client.conversations.items.list(created.id)] != []
    deleted = client.conversations.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, 'conversation.deleted', True)
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(created.id)


@pytest.mark.parametrize('body', [b'', b'{}', b'{"items": []}', b'{"items": null, "metadata": null}'])
def test_create_accepts_empty_and_null_fields(served: Served, body: bytes) -> None:
    reply = served.native('POST', '/v1/conversations', data=body, headers={'Content-Type': 'application/json'})
    assert reply.status_code == 200, reply.text
    assert reply.json()['metadata'] == {}
    assert reply.json()['object'] == 'conversation'


async def test_async_client_covers_every_method(served: Served) -> None:
    client = served.async_client()
    created = await client.conversations.create(items=ITEMS[:2])
    assert (await client.conversations.retrieve(created.id)).id == created.id
    added = await client.conversations.items.create(created.id, items=ITEMS[2:])
    assert len(added.data) == len(ITEMS) - 2
    listed = [_dump(item) async for item in client.conversations.items.list(created.id, order='asc', limit=3)]
    assert [item['id'] for item in listed][2:] == [item.id for item in added.data]
    first: Any = added.data[0]
    one = await client.conversations.items.retrieve(first.id, conversation_id=created.id)
    assert _dump(one) == listed[2]
    after_delete = await client.conversations.items.delete(first.id, conversation_id=created.id)
    assert (after_delete.id, after_delete.object) == (created.id, 'conversation')
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(first.id, conversation_id=created.id)
    left = [item.id async for item in client.conversations.items.list(created.id, order='asc')]
    assert left == [item['id'] for item in listed if item['id'] != first.id]
    assert (await client.conversations.update(created.id, metadata={'k': 'v'})).metadata == {'k': 'v'}
    assert (await client.conversations.delete(created.id)).deleted is True
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.list(created.id)
    await client.close()


# --- items -----------------------------------------------------------------------------------------------------


def test_items_read_back_as_their_messages_answer_them(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create(items=ITEMS)
    items = [_dump(item) for item in client.conversations.items.list(conversation.id, order='asc')]
    assert len(items) == len(ITEMS)
    assert all(item['status'] == 'completed' for item in items)
    assert [(item['type'], item.get('role')) for item in items] == [
        ('message', 'user'),
        ('message', 'user'),
        ('message', 'system'),
        ('message', 'developer'),
        ('message', 'assistant'),
        ('function_call', None),
        ('function_call_output', None),
    ]
    assert items[0]['content'] == [{'type': 'input_text', 'text': 'a plain string'}], 'a string is answered as parts'
    assert items[4]['content'] == [{'type': 'output_text', 'text': 'Let me look.', 'annotations': []}]
    assert items[4]['id'] != 'msg_from_openai', "ids are the conversation's own"
    assert {k: items[5][k] for k in ('call_id', 'name', 'arguments')} == {
        'call_id': 'call_1',
        'name': 'weather',
        'arguments': '{"city":"Oslo"}',
    }
    assert (items[6]['call_id'], items[6]['output']) == ('call_1', '4 degrees')
    assert len({item['id'] for item in items}) == len(items)


def test_other_items_are_kept_as_sent(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create()
    added = client.conversations.items.create(conversation.id, items=KEPT)
    data: list[Any] = added.data
    for sent, item in zip(KEPT, data, strict=True):
        got = _dump(client.conversations.items.retrieve(item.id, conversation_id=conversation.id))
        assert got == _dump(item)
        got.pop('id')
        if sent['type'] != 'reasoning':
            assert got.pop('status') == 'completed'
        assert got == sent


def test_pagination_pages_exactly(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create(items=[_text(n) for n in range(5)])
    first: Any = client.conversations.items.list(conversation.id, limit=2)
    assert _texts(first.data) == ['message 4', 'message 3']
    assert (first.first_id, first.last_id, first.has_more) == (first.data[0].id, first.data[1].id, True)
    rest: Any = client.conversations.items.list(conversation.id, limit=3, after=first.last_id)
    assert _texts(rest.data) == ['message 2', 'message 1', 'message 0']
    assert rest.has_more is False, 'exact: no more after the last'
    asc: Any = client.conversations.items.list(conversation.id, limit=4, order='asc', after=rest.data[1].id)
    assert _texts(asc.data) == ['message 2', 'message 3', 'message 4']
    assert asc.has_more is False
    empty = served.native('GET', f'/v1/conversations/{conversation.id}/items?after={first.data[0].id}&order=asc')
    assert empty.json() == {'object': 'list', 'data': [], 'first_id': None, 'last_id': None, 'has_more': False}
    default = client.conversations.items.list(conversation.id, include=['message.output_text.logprobs'])
    assert len(default.data) == 5


def _fill(client: OpenAI, conversation_id: str, count: int) -> None:
    for start in range(0, count, 20):
        batch = [_text(n) for n in range(start, min(start + 20, count))]
        client.conversations.items.create(conversation_id, items=batch)


def test_auto_pagination_over_250_items_both_orders(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create()
    _fill(client, conversation.id, 250)
    texts = [f'message {n}' for n in range(250)]
    assert _texts(client.conversations.items.list(conversation.id, order='asc')) == texts
    assert _texts(client.conversations.items.list(conversation.id, limit=100)) == texts[::-1]


async def test_async_auto_pagination_over_250_items_both_orders(served: Served) -> None:
    sync = served.client()
    conversation = sync.conversations.create()
    _fill(sync, conversation.id, 250)
    client = served.async_client()
    texts = [f'message {n}' for n in range(250)]
    asc: Any = [item async for item in client.conversations.items.list(conversation.id, order='asc', limit=37)]
    assert _texts(asc) == texts
    desc: Any = [item async for item in client.conversations.items.list(conversation.id)]
    assert _texts(desc) == texts[::-1]
    await client.close()


def test_idempotency_key_writes_once(served: Served) -> None:
    client = served.client()
    key = {'Idempotency-Key': str(uuid.uuid4())}
    one = client.conversations.create(items=[_text(0)], extra_headers=key)
    again = client.conversations.create(items=[_text(0)], extra_headers=key)
    assert again.id == one.id
    key = {'Idempotency-Key': str(uuid.uuid4())}
    first = client.conversations.items.create(one.id, items=[_text(1)], extra_headers=key)
    second = client.conversations.items.create(one.id, items=[_text(1)], extra_headers=key)
    assert first == second
    assert len(client.conversations.items.list(one.id).data) == 2


def test_request_id_on_every_answer(served: Served) -> None:
    client = served.client()
    raw = client.conversations.with_raw_response.create()
    assert raw.headers['x-request-id']
    for reply in (
        served.native('GET', f'/v1/conversations/{raw.parse().id}/items'),
        served.native('GET', '/v1/conversations/missing'),
        served.native('GET', '/v1/nothing'),
        served.native('GET', '/v1/conversations', headers={'Authorization': 'Bearer wrong'}),
    ):
        assert reply.headers['X-Request-ID'], reply.url
    given = served.native('GET', '/v1/conversations/missing', headers={'X-Request-ID': 'trace-1'})
    assert given.headers['X-Request-ID'] == 'trace-1'


# --- errors ----------------------------------------------------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    assert exc.response.headers['x-request-id']
    body = exc.body
    assert isinstance(body, dict)
    assert set(body) == {'message', 'type', 'param', 'code'}
    return body


def test_a_wrong_key_is_an_authentication_error(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client(key='wrong').conversations.create()
    assert _error(caught.value)['code'] == 'unauthorized'


def test_an_unknown_conversation_is_not_found_on_every_route(served: Served) -> None:
    client = served.client()
    missing = f'missing-{uuid.uuid4()}'
    calls: list[Any] = [
        lambda: client.conversations.retrieve(missing),
        lambda: client.conversations.update(missing, metadata={'a': 'b'}),
        lambda: client.conversations.delete(missing),
        lambda: client.conversations.items.create(missing, items=[_text(0)]),
        lambda: client.conversations.items.list(missing),
        lambda: client.conversations.items.retrieve('msg_0000000011', conversation_id=missing),
        lambda: client.conversations.items.delete('msg_0000000011', conversation_id=missing),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert _error(caught.value)['type'] == 'invalid_request_error'
    assert served.native('GET', f'{API}/sessions/{missing}').status_code == 404, 'items create made no session'


def test_an_unknown_item_is_not_found(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create(items=[_text(0)])
    other = client.conversations.create(items=[_text(0)])
    item: Any = client.conversations.items.list(other.id).data[0]
    for item_id in (item.id, 'msg_00000000999', 'nope'):
        with pytest.raises(openai.NotFoundError) as caught:
            client.conversations.items.retrieve(item_id, conversation_id=conversation.id)
        assert _error(caught.value)['code'] == 'item_not_found'
        with pytest.raises(openai.NotFoundError) as caught:
            client.conversations.items.delete(item_id, conversation_id=conversation.id)
        assert _error(caught.value)['code'] == 'item_not_found'
    assert len(client.conversations.items.list(other.id).data) == 1, 'nothing was deleted elsewhere'


def test_another_tenant_sees_nothing(served: Served) -> None:
    conversation = served.client().conversations.create()
    with pytest.raises(openai.NotFoundError):
        served.client(key=OTHER_KEY).conversations.retrieve(conversation.id)


def _conversations(client: OpenAI, **params: Any) -> dict[str, Any]:
    """`GET /v1/conversations` (beyond OpenAI: the SDK has no method for it) through the client's own request path."""
    page: dict[str, Any] = client.get('/conversations', cast_to=dict, options={'params': params})
    return page


def test_a_persons_conversations_newest_first_in_pages(served: Served) -> None:
    client, person = served.client(), f'user-{uuid.uuid4().hex[:8]}'
    created = [client.conversations.create(metadata={'user_id': person, 'n': str(n)}) for n in range(5)]
    client.conversations.create(metadata={'user_id': f'{person}-other'})
    newest_first = [conversation.id for conversation in reversed(created)]

    first = _conversations(client, metadata={'user_id': person}, limit=2)  # the SDK sends metadata[user_id]=…
    assert set(first) == {'object', 'data', 'first_id', 'last_id', 'has_more'}
    assert first['object'] == 'list'
    assert [c['id'] for c in first['data']] == newest_first[:2]
    assert (first['first_id'], first['last_id'], first['has_more']) == (newest_first[0], newest_first[1], True)
    assert first['data'][0] == {
        'id': newest_first[0],
        'object': 'conversation',
        'created_at': created[-1].created_at,
        'metadata': {'user_id': person, 'n': '4'},
    }
    second = _conversations(client, metadata={'user_id': person}, limit=2, after=first['last_id'])
    assert [c['id'] for c in second['data']] == newest_first[2:4]
    last = _conversations(client, metadata={'user_id': person}, limit=2, after=second['last_id'])
    assert ([c['id'] for c in last['data']], last['has_more']) == (newest_first[4:], False)
    assert _conversations(client, metadata={'user_id': 'nobody-' + person}) == {
        'object': 'list',
        'data': [],
        'first_id': None,
        'last_id': None,
        'has_more': False,
    }
    assert not _conversations(served.client(key=OTHER_KEY), metadata={'user_id': person})['data'], 'tenants apart'
    everything = _conversations(client, limit=100)  # no filter: every conversation of the tenant, newest first
    assert [c['id'] for c in everything['data'][:6]][1:] == newest_first

    refused: list[tuple[dict[str, Any], str]] = [
        ({'metadata': {'color': 'red'}}, 'metadata[color]'),
        ({'after': 'no-such-conversation'}, 'after'),
        ({'limit': 101}, 'limit'),
    ]
    for params, param in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            _conversations(client, **params)
        error = _error(caught.value)
        assert (error['code'], error['param']) == ('invalid_parameter', param)
    with pytest.raises(openai.BadRequestError) as caught:
        _conversations(client, metadata={'color': 'red'})
    assert 'metadata[user_id]' in _error(caught.value)['message'], 'names the indexed keys'


@pytest.mark.parametrize(
    ('metadata', 'param'),
    [
        ({f'k{n}': 'v' for n in range(17)}, 'metadata'),
        ({'k' * 65: 'v'}, 'metadata'),
        ({'k': 'v' * 513}, 'metadata.k'),
        ({'k': 1}, 'metadata.k'),
    ],
)
def test_metadata_beyond_openai_s_limits_is_a_bad_request(served: Served, metadata: Any, param: str) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.conversations.create(metadata=metadata)
    error = _error(caught.value)
    assert (error['type'], error['code']) == ('invalid_request_error', 'validation_error')
    assert error['param'] is not None
    assert error['param'].startswith(param)
    conversation = client.conversations.create(metadata={f'k{n}': 'v' * 512 for n in range(16)})
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conversation.id, metadata=metadata)


def test_bad_requests(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create()
    items = client.conversations.items
    bad: list[Any] = [
        lambda: client.conversations.create(items=[_text(n) for n in range(21)]),
        lambda: client.conversations.items.create(conversation.id, items=[_text(n) for n in range(21)]),
        lambda: client.conversations.items.create(conversation.id, items=[]),
        lambda: items.create(conversation.id, items=_any([{'content': 'no type, no role'}])),
        lambda: items.create(conversation.id, items=_any([{'role': 'tool', 'content': 'x'}])),
        lambda: client.conversations.items.create(
            conversation.id, items=_any([{'type': 'function_call', 'name': 'f'}])
        ),
        lambda: client.conversations.items.list(conversation.id, limit=101),
        lambda: client.conversations.items.list(conversation.id, order='sideways'),  # type: ignore[arg-type]
        lambda: client.conversations.items.list(conversation.id, after='msg_12345678901'),
        lambda: client.conversations.retrieve('bad id!'),
    ]
    for call in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        _error(caught.value)
    assert client.conversations.items.list(conversation.id).data == [], 'nothing was written'


def test_a_full_conversation_is_a_conflict_the_sdk_does_not_retry(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create()
    _fill(client, conversation.id, MAX_MESSAGES)
    with pytest.raises(openai.ConflictError) as caught:
        client.conversations.items.create(conversation.id, items=[_text(0)])
    assert _error(caught.value)['code'] == 'session_full'
    assert caught.value.response.headers['x-should-retry'] == 'false'


@pytest.mark.parametrize('served', ['redis'], indirect=True)  # the in-memory store always answers
def test_a_store_that_does_not_answer_is_an_internal_server_error(served: Served) -> None:
    assert served.redis is not None
    client = served.client(max_retries=0)
    conversation = client.conversations.create()
    served.redis.pause()
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.conversations.items.list(conversation.id)
    finally:
        served.redis.resume()
    assert caught.value.status_code == 503
    assert _error(caught.value)['type'] == 'server_error'
    assert client.conversations.items.list(conversation.id).data == []


# --- one store, two APIs ---------------------------------------------------------------------------------------


def test_a_conversation_reads_back_natively(served: Served) -> None:
    client = served.client()
    conversation = client.conversations.create(metadata={'user_id': 'u7'}, items=ITEMS)
    session = served.native('GET', f'{API}/sessions/{conversation.id}').json()
    assert session['metadata'] == {'user_id': 'u7'}
    natively = [{k: v for k, v in m.items() if k not in ('id', 'timestamp')} for m in session['messages']]
    assert natively == [
        {'role': 'user', 'content': 'a plain string'},
        {'role': 'user', 'content': 'no type, a role'},
        {'role': 'system', 'content': 'be brief'},
        {'role': 'developer', 'content': 'use tools'},
        {'role': 'assistant', 'content': 'Let me look.'},
        {
            'role': 'assistant',
            'content': '',
            'tool_calls': [
                {'id': 'call_1', 'type': 'function', 'function': {'name': 'weather', 'arguments': '{"city":"Oslo"}'}}
            ],
        },
        {'role': 'tool', 'content': '4 degrees', 'tool_call_id': 'call_1'},
    ]
    kept = client.conversations.items.create(conversation.id, items=KEPT[1:2])
    message = served.native('GET', f'{API}/sessions/{conversation.id}/messages?limit=1').json()[0]
    assert message['content'] == 'What is in this picture?', 'the joined text of the text parts'
    assert kept.data[0].type == 'message'


CALL = {'name': 'w', 'arguments': '{}'}


def test_a_native_session_is_a_conversation(served: Served) -> None:
    session_id = f'native-{uuid.uuid4()}'
    created = served.native('POST', f'{API}/sessions', json={'id': session_id, 'metadata': {'user_id': 'n'}})
    assert created.status_code == 201
    messages = [
        {'role': 'system', 'content': 'be kind'},
        {'role': 'user', 'content': 'weather?', 'name': 'ann'},
        {'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c9', 'type': 'function', 'function': CALL}]},
        {'role': 'tool', 'content': 'sunny', 'tool_call_id': 'c9'},
        {'role': 'assistant', 'content': 'It is sunny.'},
    ]
    assert served.native('POST', f'{API}/sessions/{session_id}/messages', json=messages).status_code == 201
    client = served.client()
    conversation = client.conversations.retrieve(session_id)
    assert conversation.metadata == {'user_id': 'n'}
    items = [_dump(item) for item in client.conversations.items.list(session_id, order='asc')]
    for item in items:
        item.pop('id')
    done = {'status': 'completed'}
    assert items == [
        {'type': 'message', **done, 'role': 'system', 'content': [{'type': 'input_text', 'text': 'be kind'}]},
        {'type': 'message', **done, 'role': 'user', 'content': [{'type': 'input_text', 'text': 'weather?'}]},
        {'type': 'function_call', **done, 'call_id': 'c9', 'name': 'w', 'arguments': '{}'},
        {'type': 'function_call_output', **done, 'output': 'sunny', 'call_id': 'c9'},
        {
            'type': 'message',
            **done,
            'role': 'assistant',
            'content': [{'type': 'output_text', 'text': 'It is sunny.', 'annotations': []}],
        },
    ]
    client.conversations.items.create(session_id, items=[{'role': 'user', 'content': 'thanks'}])
    last = served.native('GET', f'{API}/sessions/{session_id}/messages?limit=1').json()[0]
    assert (last['id'], last['role'], last['content']) == (6, 'user', 'thanks')


# --- the Agents SDK --------------------------------------------------------------------------------------------


async def test_agents_sdk_session(served: Served) -> None:
    client = served.async_client()
    conversation = await client.conversations.create()
    session = OpenAIConversationsSession(conversation_id=conversation.id, openai_client=client)
    sent: list[Any] = [{'role': 'user' if n % 2 == 0 else 'assistant', 'content': f'turn {n}'} for n in range(45)]
    await session.add_items(sent)  # three requests: more than 20 items
    items: Any = await session.get_items()
    assert [item['content'][0]['text'] for item in items] == [f'turn {n}' for n in range(45)]
    last: Any = await session.get_items(limit=5)
    assert [item['content'][0]['text'] for item in last] == [f'turn {n}' for n in range(40, 45)]
    popped: Any = await session.pop_item()
    assert popped['content'][0]['text'] == 'turn 44'
    assert len(await session.get_items()) == 44
    native = served.native('GET', f'{API}/sessions/{conversation.id}/messages?limit=1').json()
    assert native[0]['content'] == 'turn 43', 'pop_item deleted the stored message'
    await session.clear_session()
    assert served.native('GET', f'{API}/sessions/{conversation.id}').status_code == 404
    fresh = OpenAIConversationsSession(openai_client=client)
    await fresh.add_items([{'role': 'user', 'content': 'hello'}])
    assert served.native('GET', f'{API}/sessions/{fresh.session_id}/messages').json()[0]['content'] == 'hello'
    await client.close()


# --- the module itself -----------------------------------------------------------------------------------------


def test_memsvc_imports_no_client_of_openai() -> None:
    code = 'import sys, memsvc.app, memsvc.cli; sys.exit(sorted({"openai", "agents"} & set(sys.modules)) != [])'
    assert subprocess.run([sys.executable, '-c', code], env=clean_env(), check=False).returncode == 0


def test_the_document_describes_v1_with_its_error_shape() -> None:
    from memsvc.openapi import build_openapi
    from memsvc.settings import Settings

    paths = build_openapi(Settings())['paths']
    operations = {
        (path, method): operation
        for path, item in paths.items()
        if path.startswith('/v1/')
        for method, operation in item.items()
    }
    assert sorted(operation['operationId'] for operation in operations.values()) == [
        'createConversation',
        'createConversationItems',
        'deleteConversation',
        'deleteConversationItem',
        'getConversation',
        'getConversationItem',
        'listConversationItems',
        'listConversations',
        'updateConversation',
    ]
    for operation in operations.values():
        error = operation['responses']['400']['content']['application/json']['schema']
        assert error == {'$ref': '#/components/schemas/OpenAIError'}
    listing = paths['/v1/conversations']['get']
    assert [p['name'] for p in listing['parameters'] if p['name'].startswith('metadata')] == ['metadata[user_id]']
    assert listing['responses']['200']['content']['application/json']['schema'] == {
        '$ref': '#/components/schemas/ConversationList'
    }


def test_the_read_path_s_items_are_to_item_s() -> None:
    """`encoded_items` writes bare messages' items inline: the same items as `to_item` makes, for every kind."""
    from memsvc.compat.items import ItemIds, encoded_items, to_item

    stored: list[Any] = [
        {'id': n, 'role': role, 'content': content, 'timestamp': 't'}
        for n, (role, content) in enumerate(
            [('user', 'a'), ('assistant', 'b'), ('system', ''), ('developer', 'd'), ('tool', 'e')], start=1
        )
    ]
    stored += [
        {'id': 9, 'role': 'tool', 'content': 'r', 'tool_call_id': 'c', 'timestamp': 't'},
        {'id': 10, 'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c', 'function': CALL}], 'timestamp': 't'},
        {'id': 11, 'role': 'user', 'content': 'x', 'name': 'ann', 'timestamp': 't'},
        {
            'id': 12,
            'role': 'assistant',
            'content': '',
            'metadata': {'openai_item': {'type': 'reasoning'}},
            'timestamp': 't',
        },
    ]
    ids = ItemIds('s')
    stored += [{'id': 13, 'role': 'user', 'content': 'quote " \\ ünï ✓ \u2028 ,"timestamp":"x"', 'timestamp': 't'}]
    assert [orjson.loads(item) for item in encoded_items(stored, ids)] == [to_item(message, ids) for message in stored]
