"""The adapters against a real `memsvc serve`: the Agents SDK's `Runner` with a session in memsvc (the SDK's own
scripted `Model`, so no provider is called), and LlamaIndex's `ChatMemoryBuffer` over `MemsvcChatStore`, every
method of the chat store sync and async. What they write is read back natively, as any other client reads it."""

import uuid
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.memory import ChatMemoryBuffer

from memsvc.client import AsyncMemsvcClient, InvalidInput, MemsvcClient
from memsvc.integrations.agents import MemsvcSession
from memsvc.integrations.llama_index import MemsvcChatStore
from tests.client_server import KEY, Served, served

__all__ = ['served']  # the fixture

CONFIG = RunConfig(tracing_disabled=True)


def _sid(tag: str) -> str:
    return f'{tag}-{uuid.uuid4().hex[:10]}'


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f'light rain in {city}'


async def test_an_agent_keeps_its_history_in_memsvc(served: Served) -> None:
    sid = _sid('agent')
    model = ScriptedModel(
        [
            [function_call('get_weather', {'city': 'Vienna'}, call_id='call_1')],
            [assistant_message('Light rain in Vienna.')],
            [assistant_message('You asked about Vienna.')],
        ]
    )
    agent = Agent(name='travel', instructions='Answer briefly.', model=model, tools=[get_weather])
    async with AsyncMemsvcClient(served.url, KEY) as client:
        session = MemsvcSession(sid, client)
        first = await Runner.run(agent, 'Is it raining in Vienna?', session=session, run_config=CONFIG)
        assert first.final_output == 'Light rain in Vienna.'
        second = await Runner.run(agent, 'What did I ask?', session=session, run_config=CONFIG)
        assert second.final_output == 'You asked about Vienna.'

        # the third model call was given the first turn, read back from memsvc, and the new question
        seen = model.last_call.input if model.last_call else None
        assert isinstance(seen, list)
        assert [item.get('type', 'message') for item in seen] == [
            'message', 'function_call', 'function_call_output', 'message', 'message'
        ]  # fmt: skip
        assert seen[2]['output'] == 'light rain in Vienna'
        assert 'id' not in seen[0], "memsvc's item ids are not sent to a model"

        stored = await client.get_messages(sid)
        assert [(m['role'], m['content']) for m in stored] == [
            ('user', 'Is it raining in Vienna?'),
            ('assistant', ''),
            ('tool', 'light rain in Vienna'),
            ('assistant', 'Light rain in Vienna.'),
            ('user', 'What did I ask?'),
            ('assistant', 'You asked about Vienna.'),
        ]
        assert stored[1]['tool_calls'][0]['function'] == {'name': 'get_weather', 'arguments': '{"city":"Vienna"}'}
        assert stored[2]['tool_call_id'] == 'call_1'

        last_two = await session.get_items(limit=2)
        assert [item.get('role') for item in last_two] == ['user', 'assistant']
        popped = await session.pop_item()
        assert popped is not None
        assert popped['content'][0]['text'] == 'You asked about Vienna.'  # type: ignore[index,typeddict-item]
        assert len(await session.get_items()) == 5
        with pytest.raises(InvalidInput):
            await session.add_items([{'type': 'function_call', 'name': 'f', 'arguments': '{}'}])  # type: ignore[list-item]
        await session.clear_session()
        assert await session.get_items() == []
        assert await session.pop_item() is None
        assert await MemsvcSession(_sid('never'), client).get_items() == []


TOOL_CALL = {'id': 'call_7', 'type': 'function', 'function': {'name': 'weather', 'arguments': '{"city":"Oslo"}'}}


def _conversation() -> list[ChatMessage]:
    return [
        ChatMessage(role='system', content='Be brief.'),
        ChatMessage(role='user', content='Weather in Oslo?'),
        ChatMessage(role='assistant', content='', additional_kwargs={'tool_calls': [TOOL_CALL]}),
        ChatMessage(role='tool', content='4 degrees', additional_kwargs={'tool_call_id': 'call_7', 'name': 'weather'}),
        ChatMessage(role='chatbot', content='Cold: 4 degrees.', additional_kwargs={'confidence': 0.9}),
        ChatMessage(
            role='user',
            blocks=[TextBlock(text='And this?'), ImageBlock(url='https://example.invalid/a.png')],
        ),
    ]


def test_chat_memory_buffer_reads_and_writes_through_memsvc(served: Served) -> None:
    sid = _sid('llama')
    store, other = MemsvcChatStore(base_url=served.url, api_key=KEY), MemsvcChatStore(base_url=served.url, api_key=KEY)
    try:
        memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=sid, token_limit=10_000)
        for message in _conversation():
            memory.put(message)
        assert other.get_messages(sid) == memory.get_all() == _conversation(), 'read back as written'
        with MemsvcClient(served.url, KEY) as native:
            stored = native.get_messages(sid)
        assert [m['role'] for m in stored] == ['system', 'user', 'assistant', 'tool', 'assistant', 'user']
        assert stored[2]['tool_calls'] == [TOOL_CALL]
        assert (stored[3]['tool_call_id'], stored[3]['name']) == ('call_7', 'weather')
        assert stored[5]['content'] == 'And this?'

        small = ChatMemoryBuffer.from_defaults(chat_store=other, chat_store_key=sid, token_limit=12)
        window = small.get()
        assert 0 < len(window) < 6
        assert window == _conversation()[-len(window) :]
        memory.set(_conversation()[:2])
        assert other.get_messages(sid) == _conversation()[:2]
        assert sid in other.get_keys()
        memory.reset()
        assert other.get_messages(sid) == []
        assert sid not in other.get_keys()
    finally:
        store.close()
        other.close()


async def test_every_chat_store_method_sync_and_async(served: Served) -> None:
    store = MemsvcChatStore(base_url=served.url, api_key=KEY)
    conversation = _conversation()
    try:
        for kind in ('sync', 'async'):
            sid = _sid(f'store-{kind}')
            calls: dict[str, Any] = {
                name: getattr(store, name if kind == 'sync' else async_name)
                for name, async_name in (
                    ('set_messages', 'aset_messages'),
                    ('get_messages', 'aget_messages'),
                    ('add_message', 'async_add_message'),
                    ('delete_message', 'adelete_message'),
                    ('delete_last_message', 'adelete_last_message'),
                    ('delete_messages', 'adelete_messages'),
                    ('get_keys', 'aget_keys'),
                )
            }

            async def call(name: str, *args: Any, calls: dict[str, Any] = calls, kind: str = kind) -> Any:
                result = calls[name](*args)
                return await result if kind == 'async' else result

            assert await call('get_messages', sid) == []
            await call('set_messages', sid, conversation[:3])
            await call('add_message', sid, conversation[3])
            assert await call('get_messages', sid) == conversation[:4]
            assert await call('delete_message', sid, 1) == conversation[1]
            assert await call('delete_message', sid, 7) is None
            assert await call('delete_last_message', sid) == conversation[3]
            assert sid in await call('get_keys')
            assert await call('delete_messages', sid) == [conversation[0], conversation[2]]
            assert await call('delete_messages', sid) is None
            assert await call('delete_last_message', sid) is None
            assert sid not in await call('get_keys')
        memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=_sid('amemory'))
        await memory.aput(conversation[1])
        assert await memory.aget() == [conversation[1]]
    finally:
        store.close()
