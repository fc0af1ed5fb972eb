"""LlamaIndex's `BaseChatStore` on memsvc: a chat store key is a memsvc session, each `ChatMessage` a message.

    store = MemsvcChatStore(base_url='http://127.0.0.1:8080', api_key=KEY)
    memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key='user-42', token_limit=3000)

(LlamaIndex's newer `Memory` keeps its history in an SQL store of its own kind, `AsyncDBChatStore`, not in a
`BaseChatStore`: `ChatMemoryBuffer`, `ChatSummaryMemoryBuffer` and anything else that takes a chat store use this.)

Messages are stored natively: the role (`function` as `tool`, `chatbot` and `model` as `assistant`), the text as
`content`, and from `additional_kwargs` the OpenAI-shaped `tool_calls`, `tool_call_id` and `name`; what that
leaves out (another role's name, other `additional_kwargs`, blocks other than one text block) is kept in the
message's metadata under `llama_index`, so a message reads back as it was written.

Every method exists sync and async, and all of them run on one `MemsvcClient`: its own event loop in a thread, so
the async methods can be awaited from any loop. `delete_messages` deletes the session (as LlamaIndex's stores drop
the key); `delete_message` and `delete_messages` act under `If-Match` on what they read, again on a conflict.
"""

import contextlib
from typing import Any, Final

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.storage.chat_store import BaseChatStore
from pydantic import Field, PrivateAttr

from memsvc.client import AsyncMemsvcClient, MemsvcClient, PreconditionFailed, SessionNotFound
from memsvc.models import ROLES, Message, NewMessage

KEPT: Final = 'llama_index'
"""The metadata key of what a message cannot hold natively."""
_ROLE_FOR: Final = {'function': 'tool', 'chatbot': 'assistant', 'model': 'assistant'}
_NATIVE_KWARGS: Final = ('tool_call_id', 'name')
BATCH: Final = 100


def to_memsvc(message: ChatMessage) -> NewMessage:
    dumped = message.model_dump(mode='json')
    role, extra = str(dumped['role']), dict(dumped['additional_kwargs'])
    native: dict[str, Any] = {'role': _ROLE_FOR.get(role, role), 'content': message.content or ''}
    kept: dict[str, Any] = {}
    if native['role'] != role or role not in ROLES:
        kept['role'] = role
    calls = extra.get('tool_calls')
    if isinstance(calls, list) and calls and all(isinstance(call, dict) for call in calls):
        native['tool_calls'] = extra.pop('tool_calls')
    for name in _NATIVE_KWARGS:
        value = extra.get(name)
        if isinstance(value, str) and 0 < len(value) <= 256:
            native[name] = extra.pop(name)
    if extra:
        kept['additional_kwargs'] = extra
    blocks = dumped['blocks']
    if not (len(blocks) == 1 and blocks[0].get('block_type') == 'text') and blocks:
        kept['blocks'] = blocks
    if kept:
        native['metadata'] = {KEPT: kept}
    return native  # type: ignore[return-value]  # a NewMessage's fields


def from_memsvc(message: Message) -> ChatMessage:
    kept = message.get('metadata', {}).get(KEPT, {})
    extra = dict(kept.get('additional_kwargs', {}))
    if 'tool_calls' in message:
        extra['tool_calls'] = message['tool_calls']
    for name in _NATIVE_KWARGS:
        if name in message:
            extra[name] = message[name]
    fields: dict[str, Any] = {'role': kept.get('role', message['role']), 'additional_kwargs': extra}
    if 'blocks' in kept:
        fields['blocks'] = kept['blocks']
    else:
        fields['content'] = message['content']
    return ChatMessage.model_validate(fields)


async def _get(client: AsyncMemsvcClient, key: str) -> list[ChatMessage]:
    try:
        return [from_memsvc(message) for message in await client.get_messages(key)]
    except SessionNotFound:
        return []


async def _set(client: AsyncMemsvcClient, key: str, messages: list[ChatMessage]) -> None:
    with contextlib.suppress(SessionNotFound):
        await client.clear_messages(key)
    stored = [to_memsvc(message) for message in messages]
    for start in range(0, len(stored), BATCH):
        await client.append_many(key, stored[start : start + BATCH])


async def _delete_all(client: AsyncMemsvcClient, key: str) -> list[ChatMessage] | None:
    while True:
        try:
            read = await client.get_versioned(key)
            await client.delete_session(key, if_match=read)
        except SessionNotFound:
            return None
        except PreconditionFailed:
            continue
        return [from_memsvc(message) for message in read.value['messages']]


async def _delete_at(client: AsyncMemsvcClient, key: str, index: int) -> ChatMessage | None:
    while True:
        try:
            read = await client.get_versioned(key)
            messages = read.value['messages']
            if not -len(messages) <= index < len(messages):
                return None
            await client.delete_message(key, messages[index]['id'], if_match=read)
        except SessionNotFound:
            return None
        except PreconditionFailed:
            continue
        return from_memsvc(messages[index])


async def _delete_last(client: AsyncMemsvcClient, key: str) -> ChatMessage | None:
    try:
        popped = await client.pop(key)
    except SessionNotFound:
        return None
    return None if popped is None else from_memsvc(popped)


async def _keys(client: AsyncMemsvcClient) -> list[str]:
    return [session['id'] async for session in client.sessions(include_messages=False)]


class MemsvcChatStore(BaseChatStore):
    """A LlamaIndex chat store in memsvc. Call `close()` when done (it stops the client's thread)."""

    base_url: str = Field(description='where memsvc answers, e.g. http://127.0.0.1:8080')
    api_key: str | None = Field(default=None, exclude=True, description='the API key (names the tenant)')
    timeout: float = Field(default=10.0, description='seconds one attempt of a request may take')
    _client: MemsvcClient | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return 'MemsvcChatStore'

    @property
    def client(self) -> MemsvcClient:
        if self._client is None:
            self._client = MemsvcClient(self.base_url, self.api_key, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Replace the messages of `key` (the session stays, with its metadata)."""
        self.client.call(lambda client: _set(client, key, messages))

    def get_messages(self, key: str) -> list[ChatMessage]:
        return self.client.call(lambda client: _get(client, key))

    def add_message(self, key: str, message: ChatMessage) -> None:
        self.client.append(key, to_memsvc(message))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        return self.client.call(lambda client: _delete_all(client, key))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        return self.client.call(lambda client: _delete_at(client, key, idx))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        return self.client.call(lambda client: _delete_last(client, key))

    def get_keys(self) -> list[str]:
        return self.client.call(lambda client: _keys(client))

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        await self.client.run(lambda client: _set(client, key, messages))

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        return await self.client.run(lambda client: _get(client, key))

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        await self.client.run(lambda client: client.append(key, to_memsvc(message)))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        return await self.client.run(lambda client: _delete_all(client, key))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await self.client.run(lambda client: _delete_at(client, key, idx))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        return await self.client.run(lambda client: _delete_last(client, key))

    async def aget_keys(self) -> list[str]:
        return await self.client.run(lambda client: _keys(client))
