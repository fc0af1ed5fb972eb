"""AsyncMemoryManager: the rules between the routes and a store.

It checks session ids (they become storage keys, so no store ever sees one outside the allowed
characters), assigns ids and timestamps, enforces the configured bounds, turns the store's
`None`/`False` into domain errors, and encodes listing cursors. It knows nothing about HTTP.
"""

import base64
import binascii
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from memsvc.errors import InvalidCursor, InvalidInput, SessionExists, SessionNotFound
from memsvc.models import (
    NewMessage,
    NewSession,
    SearchHit,
    SessionRecord,
    StoredSession,
    encode_json,
    encode_message,
    is_session_id,
    merge_patch,
    require_session_id,
    to_micros,
    utc_now,
)
from memsvc.settings import Settings
from memsvc.stores.base import ListCursor, MessageRange, Store


def encode_cursor(position: ListCursor) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip('=')


def decode_cursor(token: str) -> ListCursor:
    try:
        raw = base64.urlsafe_b64decode(token + '=' * (-len(token) % 4))
        micros, session_id = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise InvalidCursor() from None
    if type(micros) is not int or not isinstance(session_id, str) or not is_session_id(session_id):
        raise InvalidCursor()
    return micros, session_id


class AsyncMemoryManager:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self._max_content = settings.max_content_chars
        self._max_keys = settings.max_metadata_keys
        self._max_meta_bytes = settings.max_metadata_bytes
        self.max_batch = settings.max_batch

    async def ping(self) -> None:
        await self.store.ping()

    async def create_session(self, tenant: str, body: NewSession) -> StoredSession:
        now = utc_now()
        record = SessionRecord(
            id=str(uuid.uuid4()) if body.id is None else require_session_id(body.id),
            created_at=now,
            updated_at=now,
            metadata=self._check_metadata(body.metadata, 'metadata'),
            version=0,
        )
        if not await self.store.create_session(tenant, record):
            raise SessionExists(record.id)
        return StoredSession(record, [])

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool = True) -> StoredSession:
        require_session_id(session_id)
        found = await self.store.get_session(tenant, session_id, with_messages=with_messages)
        if found is None:
            raise SessionNotFound(session_id)
        return found

    async def list_sessions(
        self, tenant: str, *, limit: int, cursor: str | None, with_messages: bool
    ) -> tuple[list[StoredSession], str | None]:
        """A page of sessions and the cursor of the next page (None on the last page)."""
        after = decode_cursor(cursor) if cursor is not None else None
        sessions, more = await self.store.list_sessions(tenant, limit=limit, after=after, with_messages=with_messages)
        if not more or not sessions:
            return sessions, None
        last = sessions[-1].record
        return sessions, encode_cursor((to_micros(last.updated_at), last.id))

    async def update_metadata(self, tenant: str, session_id: str, patch: dict[str, Any]) -> StoredSession:
        """Merge `patch` into the metadata atomically; return the session as it is after the change."""

        def apply(current: bytes) -> bytes:
            return self._check_metadata(merge_patch(orjson.loads(current), patch), 'metadata')

        require_session_id(session_id)
        record = await self.store.update_metadata(tenant, session_id, apply, utc_now())
        if record is None:
            raise SessionNotFound(session_id)
        messages = await self.store.get_messages(tenant, session_id, MessageRange())
        if messages is None:  # deleted right after the change
            raise SessionNotFound(session_id)
        return StoredSession(record, messages)

    async def delete_session(self, tenant: str, session_id: str) -> None:
        require_session_id(session_id)
        if not await self.store.delete_session(tenant, session_id):
            raise SessionNotFound(session_id)

    async def add_messages(
        self, tenant: str, session_id: str, messages: Sequence[NewMessage], *, batch: bool
    ) -> list[bytes]:
        """Append in one atomic step, creating the session if it is missing (the seed's `add_message`).
        `batch` says the client sent an array, so errors name fields as `[i].content`."""
        require_session_id(session_id)
        if not 1 <= len(messages) <= self.max_batch:
            raise InvalidInput('body', f'a batch holds 1 to {self.max_batch} messages, got {len(messages)}')
        now = utc_now()
        bodies = []
        for index, message in enumerate(messages):
            at = f'[{index}].' if batch else ''
            if len(message.content) > self._max_content:
                raise InvalidInput(
                    f'{at}content', f'at most {self._max_content} characters, got {len(message.content)}'
                )
            if message.metadata is not None:
                self._check_metadata(message.metadata, f'{at}metadata')
            bodies.append(encode_message(message, now, f'[{index}]' if batch else 'body'))
        return await self.store.append_messages(tenant, session_id, bodies, now)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> list[bytes]:
        require_session_id(session_id)
        messages = await self.store.get_messages(tenant, session_id, selection)
        if messages is None:
            raise SessionNotFound(session_id)
        return messages

    async def clear_messages(self, tenant: str, session_id: str) -> None:
        require_session_id(session_id)
        if not await self.store.clear_messages(tenant, session_id, utc_now()):
            raise SessionNotFound(session_id)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None = None, role: str | None = None
    ) -> list[SearchHit]:
        if session_id is not None:
            require_session_id(session_id)
        return await self.store.search(tenant, query, limit=limit, session_id=session_id, role=role)

    def _check_metadata(self, metadata: dict[str, Any], field: str) -> bytes:
        if len(metadata) > self._max_keys:
            raise InvalidInput(field, f'at most {self._max_keys} top-level keys, got {len(metadata)}')
        encoded = encode_json(metadata, field)
        if len(encoded) > self._max_meta_bytes:
            raise InvalidInput(field, f'at most {self._max_meta_bytes} bytes as JSON, got {len(encoded)}')
        return encoded
