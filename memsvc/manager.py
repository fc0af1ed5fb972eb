"""AsyncMemoryManager: the rules between the routes and a store.

It checks session ids (they become storage keys, so no store ever sees one outside the allowed
characters), assigns session ids and timestamps, bounds what a request carries (batch size, content
length, metadata), turns the store's `None`/`False` into domain errors, and encodes listing cursors.
The rules that depend on what is stored (message ids, versions, the session limits, Idempotency-Key
replay) are the stores', atomic with their writes: `stores/base.py` says which and why. It knows
nothing about HTTP.
"""

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import orjson

from memsvc import erasure, window
from memsvc.context import message_id, record
from memsvc.errors import InvalidCursor, InvalidInput, InvalidParameter, MessageNotFound, SessionExists, SessionNotFound
from memsvc.events import Change, Hub
from memsvc.export import Exporter
from memsvc.importer import Importer
from memsvc.lines import LineReader
from memsvc.models import (
    ImportResult,
    NewFork,
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
    sent_fields,
    timestamp_length,
    to_micros,
    utc_now,
)
from memsvc.render import ContextWindow, Format
from memsvc.settings import Settings
from memsvc.stores.base import (
    Appended,
    CountedPage,
    Fork,
    Idempotency,
    ListCursor,
    MessageRange,
    Store,
    Summarized,
    Truncated,
)
from memsvc.stores.index import where_of
from memsvc.tokens import DEFAULT_ENCODING, Counters, EncodingName, TokenCounter

_NO_MESSAGE = MessageRange(after=2**53 - 1)
"""After the largest message id: selects no message, so a counted read of it answers only the count."""

_IDEMPOTENT_IDS = uuid.UUID('5d2b9c64-37a4-4c55-9a0e-2f6d1c8e4b71')
"""The namespace of session ids derived from an Idempotency-Key (uuid5)."""

_stored_id = message_id  # (the methods' `message_id` parameters hide the function)


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
    """`counter` counts under the default encoding: each appended message's `context.record` is made with it once,
    at append, and stored next to the message.

    After every write of a session the `hub` learns of it (`memsvc.events`): the manager tells it when the hub is
    `local` (in_memory, Chroma); on Redis the write's own script publishes, and the manager does nothing more.
    Every write that a stream reports calls `_changed` (append, clear, delete, single-message delete, truncate), and
    its Redis script calls the scripts' `notify(kind, data)` (`redis_scripts.NOTIFY`)."""

    def __init__(self, store: Store, settings: Settings, counter: TokenCounter, hub: Hub | None = None) -> None:
        self.store = store
        self.hub = hub if hub is not None else Hub()
        self._local_events = self.hub.local
        self.counter = counter
        self.counters = Counters(counter)
        self._max_content = settings.max_content_chars
        self._max_keys = settings.max_metadata_keys
        self._max_meta_bytes = settings.max_metadata_bytes
        self.max_batch = settings.max_batch
        self._max_messages = settings.max_messages_per_session
        self._idempotency_ttl = settings.idempotency_ttl_seconds
        self._erase_batch = settings.erase_batch

    async def ping(self) -> None:
        await self.store.ping()

    async def create_session(
        self, tenant: str, body: NewSession, *, idempotency_key: str | None = None
    ) -> StoredSession:
        """With an Idempotency-Key and no id, the id is derived from the key, so that a retry lands on
        the same session (and, in Redis Cluster, in the same slot as the key's record)."""
        now = utc_now()
        if body.id is not None:
            session_id = require_session_id(body.id)
        elif idempotency_key is not None:
            session_id = str(uuid.uuid5(_IDEMPOTENT_IDS, f'{tenant}/{idempotency_key}'))
        else:
            session_id = str(uuid.uuid4())
        record = SessionRecord(
            id=session_id,
            created_at=now,
            updated_at=now,
            metadata=self._check_metadata(body.metadata, 'metadata'),
            version=0,
        )
        idempotency = self._idempotency(idempotency_key, 'create', session_id, body.model_dump)
        created = await self.store.create_session(tenant, record, idempotency=idempotency)
        if created is None:
            raise SessionExists(record.id)
        return StoredSession(created, b'[]')

    async def fork_session(
        self,
        tenant: str,
        source_id: str,
        body: NewFork,
        *,
        idempotency_key: str | None = None,
        with_messages: bool = True,
    ) -> StoredSession:
        """A copy of `source_id` up to `body.through_id` (README, "Forks"). The new id as for `create_session`:
        given, derived from the Idempotency-Key, or a new uuid4."""
        require_session_id(source_id)
        if body.id is not None:
            target = require_session_id(body.id)
        elif idempotency_key is not None:
            target = str(uuid.uuid5(_IDEMPOTENT_IDS, f'{tenant}/{idempotency_key}'))
        else:
            target = str(uuid.uuid4())
        metadata = None if body.metadata is None else self._check_metadata(body.metadata, 'metadata')
        fork = Fork(source_id, target, body.through_id, metadata, utc_now())
        idempotency = self._idempotency(
            idempotency_key, 'fork', target, lambda: [source_id, body.model_dump(exclude={'id'})]
        )
        forked = await self.store.fork_session(tenant, fork, idempotency=idempotency, with_messages=with_messages)
        if forked is None:
            raise SessionNotFound(source_id)
        return forked

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool = True) -> StoredSession:
        require_session_id(session_id)
        found = await self.store.get_session(tenant, session_id, with_messages=with_messages)
        if found is None:
            raise SessionNotFound(session_id)
        return found

    async def list_sessions(
        self,
        tenant: str,
        *,
        limit: int,
        cursor: str | None,
        with_messages: bool,
        filters: Mapping[str, str] | None = None,
    ) -> tuple[list[StoredSession], str | None]:
        """A page of sessions and the cursor of the next page (None on the last page); with `filters` ({indexed
        key: value}, checked by the route), only the sessions whose metadata holds all of them."""
        after = decode_cursor(cursor) if cursor is not None else None
        where = where_of(filters) if filters else ()
        sessions, more = await self.store.list_sessions(
            tenant, limit=limit, after=after, with_messages=with_messages, where=where
        )
        if not more or not sessions:
            return sessions, None
        last = sessions[-1].record
        return sessions, encode_cursor((to_micros(last.updated_at), last.id))

    async def message_counts(self, tenant: str, session_ids: list[str]) -> list[int]:
        """How many messages each session stores (0 for one deleted meanwhile), read together: a read of no
        message that answers the count (on Redis one script per session, sent in one pipeline)."""
        reads = (self.store.get_counted_messages(tenant, session_id, _NO_MESSAGE) for session_id in session_ids)
        pages = await asyncio.gather(*reads)
        return [0 if page is None else page.total for page in pages]

    async def update_metadata(
        self, tenant: str, session_id: str, patch: dict[str, Any], *, expected_version: int | None = None
    ) -> StoredSession:
        """Merge `patch` into the metadata atomically; return the session as it is after the change."""

        def apply(current: bytes) -> bytes:
            return self._check_metadata(merge_patch(orjson.loads(current), patch), 'metadata')

        require_session_id(session_id)
        record = await self.store.update_metadata(
            tenant, session_id, apply, utc_now(), expected_version=expected_version
        )
        if record is None:
            raise SessionNotFound(session_id)
        found = await self.store.get_session(tenant, session_id, with_messages=True)
        if found is None:  # deleted right after the change
            raise SessionNotFound(session_id)
        return StoredSession(record, found.messages)

    async def replace_metadata(self, tenant: str, session_id: str, metadata: dict[str, Any]) -> SessionRecord:
        """Replace the metadata whole, atomically (OpenAI's update); return the session record after the change."""
        require_session_id(session_id)
        encoded = self._check_metadata(metadata, 'metadata')
        record = await self.store.update_metadata(tenant, session_id, lambda current: encoded, utc_now())
        if record is None:
            raise SessionNotFound(session_id)
        return record

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> None:
        require_session_id(session_id)
        if not await self.store.delete_session(tenant, session_id, expected_version=expected_version):
            raise SessionNotFound(session_id)
        self._changed(tenant, session_id, Change('deleted'))

    async def erase_sessions(self, tenant: str, filters: Mapping[str, str]) -> int:
        """Erase every session whose metadata holds all of `filters` ({indexed key: value}, at least one, checked by
        the route) with everything it holds, in steps of `MEMSVC_ERASE_BATCH` (`memsvc.erasure`); return how many
        went. Each one's streams and long-polls learn of it as of a delete."""
        if not filters:
            raise InvalidParameter('metadata.<key>', 'an erasure needs at least one filter, never "every session"')
        deleted = Change('deleted')
        return await erasure.erase(
            self.store,
            tenant,
            where_of(filters),
            batch=self._erase_batch,
            erased=lambda session_id: self._changed(tenant, session_id, deleted),
        )

    def _changed(self, tenant: str, session_id: str, change: Change) -> None:
        """Wake this process's listeners of the session, where the store does not publish its writes itself."""
        if self._local_events:
            self.hub.notify(tenant, session_id, change)

    async def add_messages(
        self,
        tenant: str,
        session_id: str,
        messages: Sequence[NewMessage],
        *,
        batch: bool,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Appended:
        """Append in one atomic step, creating the session if it is missing (the seed's `add_message`).
        `batch` says the client sent an array, so errors name fields as `[i].content`."""
        require_session_id(session_id)
        if not 1 <= len(messages) <= self.max_batch:
            raise InvalidInput('body', f'a batch holds 1 to {self.max_batch} messages, got {len(messages)}')
        now = utc_now()
        bodies = []
        for index, message in enumerate(messages):
            if len(message['content']) > self._max_content:
                raise InvalidInput(
                    f'[{index}].content' if batch else 'content',
                    f'at most {self._max_content} characters, got {len(message["content"])}',
                )
            metadata = message.get('metadata')
            if metadata is not None:
                self._check_metadata(metadata, f'[{index}].metadata' if batch else 'metadata')
            bodies.append(encode_message(message, now, f'[{index}]' if batch else 'body'))

        def asked() -> Any:
            sent = [sent_fields(message) for message in messages]
            return sent if batch else sent[0]

        idempotency = self._idempotency(idempotency_key, 'append', session_id, asked)
        counter, length = self.counter, timestamp_length(now)
        appended = await self.store.append_messages(
            tenant,
            session_id,
            bodies,
            now,
            expected_version=expected_version,
            idempotency=idempotency,
            records=[record(counter, message, length) for message in messages],
        )
        if self._local_events:
            self.hub.appended(tenant, session_id, appended.messages)
        return appended

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes:
        """The selected messages as one JSON array."""
        require_session_id(session_id)
        messages = await self.store.get_messages(tenant, session_id, selection)
        if messages is None:
            raise SessionNotFound(session_id)
        return messages

    async def read_messages(self, tenant: str, session_id: str, selection: MessageRange) -> list[bytes]:
        """The selected messages, each as stored (the bytes every read answers), oldest first: what an event
        stream sends, one event each."""
        require_session_id(session_id)
        page = await self.store.get_counted_messages(tenant, session_id, selection)
        if page is None:
            raise SessionNotFound(session_id)
        return [raw for raw, _ in page.messages]

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage:
        """The selected messages, oldest first, each with its `context.record` under the default encoding, and how
        many the session stores. Page backwards with `MessageRange(limit=n, before=<oldest id read>)`; the leading
        run with `MessageRange(limit=n, after=0)`. Messages stored without a record are counted here."""
        require_session_id(session_id)
        page = await self.store.get_counted_messages(tenant, session_id, selection)
        if page is None:
            raise SessionNotFound(session_id)
        counter = self.counter
        if any(value == 0 for _, value in page.messages):
            counted = [(raw, value or record(counter, orjson.loads(raw))) for raw, value in page.messages]
            return CountedPage(counted, page.total)
        return page

    async def clear_messages(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> int:
        """Remove the messages; return the session's new version."""
        require_session_id(session_id)
        version = await self.store.clear_messages(tenant, session_id, utc_now(), expected_version=expected_version)
        if version is None:
            raise SessionNotFound(session_id)
        self._changed(tenant, session_id, Change('cleared'))
        return version

    async def get_message(self, tenant: str, session_id: str, message_id: int) -> bytes:
        """The stored message with this id, byte for byte as the list read answers it: the first message after
        `message_id - 1`, if it is that one."""
        require_session_id(session_id)
        found = await self.store.get_messages(tenant, session_id, MessageRange(limit=1, after=message_id - 1))
        if found is None:
            raise SessionNotFound(session_id)
        if found == b'[]' or _stored_id(found[1:-1]) != message_id:
            raise MessageNotFound(session_id, message_id)
        return found[1:-1]

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, *, expected_version: int | None = None
    ) -> int:
        """Remove one message (the summary stays); return the session's new version."""
        require_session_id(session_id)
        version = await self.store.delete_message(
            tenant, session_id, message_id, utc_now(), expected_version=expected_version
        )
        if version is None:
            raise SessionNotFound(session_id)
        self._changed(tenant, session_id, Change('message_deleted', message_id))
        return version

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, *, expected_version: int | None = None
    ) -> Truncated:
        """Remove every message with an id above `after` (and the summary, if it covers one of them)."""
        require_session_id(session_id)
        now = utc_now()
        done = await self.store.truncate_messages(tenant, session_id, after, now, expected_version=expected_version)
        if done is None:
            raise SessionNotFound(session_id)
        self._changed(tenant, session_id, Change('truncated', after))
        return done

    async def set_summary(
        self,
        tenant: str,
        session_id: str,
        content: str,
        through_id: int,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Summarized:
        """Set the session's summary, covering the messages up to `through_id` (a stored message's id);
        answer it as stored (`{"content", "through_id", "updated_at"}`) with the session's new version."""
        require_session_id(session_id)
        if len(content) > self._max_content:
            raise InvalidInput('content', f'at most {self._max_content} characters, got {len(content)}')
        now = utc_now()
        summary = orjson.dumps(
            {'content': content, 'through_id': through_id, 'updated_at': now}, option=orjson.OPT_UTC_Z
        )
        idempotency = self._idempotency(
            idempotency_key, 'set_summary', session_id, lambda: {'content': content, 'through_id': through_id}
        )
        written = await self.store.set_summary(
            tenant, session_id, summary, through_id, now, expected_version=expected_version, idempotency=idempotency
        )
        if written is None:
            raise SessionNotFound(session_id)
        return written

    async def get_summary(self, tenant: str, session_id: str) -> bytes:
        """The summary as `set_summary` answered it; `SummaryNotFound` when none is set."""
        require_session_id(session_id)
        summary = await self.store.get_summary(tenant, session_id)
        if summary is None:
            raise SessionNotFound(session_id)
        return summary

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Remove the summary (`SummaryNotFound` when none is set); return the session's new version."""
        require_session_id(session_id)
        idempotency = self._idempotency(idempotency_key, 'delete_summary', session_id, lambda: None)
        written = await self.store.delete_summary(
            tenant, session_id, utc_now(), expected_version=expected_version, idempotency=idempotency
        )
        if written is None:
            raise SessionNotFound(session_id)
        return written.version

    async def context(
        self,
        tenant: str,
        session_id: str,
        *,
        max_tokens: int | None,
        format: Format,
        encoding: EncodingName = DEFAULT_ENCODING,
    ) -> ContextWindow | bytes:
        """The context window of SPEC-2 §1 (`memsvc.context`), rendered for `format`; see `memsvc.window` for how
        it is read (one store read for most windows) and when it is answered without a step per message."""
        require_session_id(session_id)
        return await window.context(
            self.store, self.counters, tenant, session_id, max_tokens=max_tokens, format=format, encoding=encoding
        )

    def export(self, tenant: str, filters: Mapping[str, str] | None = None) -> AsyncGenerator[bytes]:
        """The tenant's sessions as NDJSON, one line each (`memsvc.export`), in pieces of whole lines; with `filters`
        ({indexed key: value}, checked by the route), only the sessions whose metadata holds all of them."""
        return Exporter(self.store, tenant, where_of(filters) if filters else ()).lines()

    async def import_lines(self, tenant: str, lines: LineReader, *, replace: bool) -> ImportResult:
        """Import every line of `lines` (`memsvc.importer`); with `replace`, a session that exists and differs is
        replaced, else left as it is."""
        importer = Importer(
            self.store,
            tenant,
            self.counter,
            self._check_metadata,
            max_content=self._max_content,
            max_messages=self._max_messages,
            replace=replace,
            replaced=lambda session_id: self._changed(tenant, session_id, Change('deleted')),
        )
        return await importer.run(lines)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None = None, role: str | None = None
    ) -> list[SearchHit]:
        if session_id is not None:
            require_session_id(session_id)
        return await self.store.search(tenant, query, limit=limit, session_id=session_id, role=role)

    def _idempotency(
        self, key: str | None, operation: str, session_id: str, asked: Callable[[], Any]
    ) -> Idempotency | None:
        """The record of a client's Idempotency-Key: its digest, and a fingerprint of what was asked, taken
        from the validated request so that a retry with another spacing or key order still matches. `asked`
        gives the request as data; it is called only with a key, so that requests without one pay for no
        model_dump."""
        if key is None:
            return None
        request = orjson.dumps([operation, session_id, asked()], option=orjson.OPT_SORT_KEYS)
        return Idempotency(
            key=hashlib.sha256(key.encode()).hexdigest(),
            fingerprint=hashlib.sha256(request).hexdigest(),
            ttl_seconds=self._idempotency_ttl,
        )

    def _check_metadata(self, metadata: dict[str, Any], field: str) -> bytes:
        if len(metadata) > self._max_keys:
            raise InvalidInput(field, f'at most {self._max_keys} top-level keys, got {len(metadata)}')
        encoded = encode_json(metadata, field)
        if len(encoded) > self._max_meta_bytes:
            raise InvalidInput(field, f'at most {self._max_meta_bytes} bytes as JSON, got {len(encoded)}')
        return encoded
