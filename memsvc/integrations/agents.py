"""The OpenAI Agents SDK's `Session` protocol on memsvc: `Runner.run(agent, input, session=MemsvcSession(...))`.

Items are stored natively, with the mapping of memsvc's own Conversations API (`memsvc.compat.items`): a
`message` item is a message of its role with its text, a `function_call` an assistant message with one tool call,
a `function_call_output` a `tool` message; any item its message cannot give back whole (reasoning, images,
several parts, …) is kept verbatim in the message's metadata and answered from there. So a conversation an agent
wrote reads back through `/api/v1/chat` (and the context window) and `/v1/conversations`, and the other way round.

Items are answered without an `id`: memsvc's item ids name its own messages, and the Responses API looks up the
ids it is sent (an id it never stored is an error there). A turn's items are one atomic append (up to 100 items;
more go in batches of 100), with an Idempotency-Key, so a retried turn is stored once.
"""

import contextlib
from typing import Any, Self

from agents.items import TResponseInputItem
from agents.memory import SessionSettings

from memsvc import errors as server_errors
from memsvc.client import AsyncMemsvcClient, SessionNotFound
from memsvc.client.errors import twin
from memsvc.compat.items import ItemIds, to_item, to_messages

BATCH = 100
"""Items per append: the server's default MEMSVC_MAX_BATCH."""


class MemsvcSession:
    """A session of the Agents SDK kept in memsvc under `session_id`. Give it a client (shared by many sessions;
    you close it), or a `base_url` and `api_key` for a client of its own, closed by `close()`."""

    def __init__(
        self,
        session_id: str,
        client: AsyncMemsvcClient | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        if (client is None) == (base_url is None):
            raise ValueError('give either a client or a base_url')
        self.session_id = session_id
        self.session_settings = session_settings
        self._owned = client is None
        self.client = client if client is not None else AsyncMemsvcClient(base_url or '', api_key)
        self._ids = ItemIds(session_id)

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The newest `limit` items (all without one, or the settings' limit), oldest first; [] for a session that
        does not exist yet."""
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        try:
            messages = await self.client.get_messages(self.session_id, limit=limit)
        except SessionNotFound:
            return []
        return [self._item(message) for message in messages]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        try:
            messages = to_messages([dict(item) for item in items])
        except server_errors.MemsvcError as exc:  # an item memsvc cannot store: the client's class of that error
            raise twin(type(exc))(exc.message) from None
        for start in range(0, len(messages), BATCH):
            await self.client.append_many(self.session_id, messages[start : start + BATCH])

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the newest item and answer it; None when there is none."""
        try:
            popped = await self.client.pop(self.session_id)
        except SessionNotFound:
            return None
        return None if popped is None else self._item(popped)

    async def clear_session(self) -> None:
        """Remove every item; the session itself (and its metadata) stays."""
        with contextlib.suppress(SessionNotFound):
            await self.client.clear_messages(self.session_id)

    async def close(self) -> None:
        """Close the client, if this session made it."""
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _item(self, message: Any) -> TResponseInputItem:
        item = to_item(message, self._ids)
        item.pop('id', None)
        return item  # type: ignore[return-value]  # the shapes of the SDK's input items (compat.items)
