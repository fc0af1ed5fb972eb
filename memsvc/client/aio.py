"""`AsyncMemsvcClient`: every route of the chat API (`/api/v1/chat`) as a typed method.

Answers are validated into the server's own types (`memsvc.models`: `Session`, `Message`, `SummaryBody`,
`ContextWindowBody`, `SearchHitBody`, …: TypedDicts, so a result is a plain dict that the type checker knows,
with timestamps as `datetime`); fields a newer server adds are dropped rather than refused. Errors raise the
classes of `memsvc.client.errors`; what is retried is in `memsvc.client.transport`.

Versions: `get_versioned` answers a session with its ETag, and every write that the server guards with
`If-Match` takes `if_match=` (an ETag as the server sent it, a version number, a `Versioned`, or `'*'`:
only if the session exists). `modify` is the read-modify-write loop built on them.
"""

import inspect
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import aiohttp
import orjson
from pydantic import TypeAdapter

from memsvc.client.errors import (
    ApiError,
    InvalidParameter,
    InvalidSessionId,
    MessageNotFound,
    PreconditionFailed,
    TransportError,
)
from memsvc.client.events import Event, EventStream
from memsvc.client.transport import DEFAULT_RETRIES, NO_RETRIES, Answer, Replay, Retries, Transport, new_idempotency_key
from memsvc.client.versions import IfMatch, Versioned, if_match_header, metadata_patch
from memsvc.models import (
    ContextWindowBody,
    Erased,
    ImportResult,
    JsonObject,
    Message,
    NewMessage,
    SearchHitBody,
    Session,
    SessionLine,
    SummaryBody,
    TruncatedBody,
    is_session_id,
    merge_patch,
)

API = '/api/v1/chat'
T = TypeVar('T')
Format = Literal['openai', 'responses', 'anthropic', 'memsvc']
Encoding = Literal['o200k_base', 'cl100k_base']

_SESSION: TypeAdapter[Session] = TypeAdapter(Session)
_SESSIONS: TypeAdapter[list[Session]] = TypeAdapter(list[Session])
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)
_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
_SUMMARY: TypeAdapter[SummaryBody] = TypeAdapter(SummaryBody)
_CONTEXT: TypeAdapter[ContextWindowBody] = TypeAdapter(ContextWindowBody)
_HITS: TypeAdapter[list[SearchHitBody]] = TypeAdapter(list[SearchHitBody])
_TRUNCATED: TypeAdapter[TruncatedBody] = TypeAdapter(TruncatedBody)
_ERASED: TypeAdapter[Erased] = TypeAdapter(Erased)
_LINE: TypeAdapter[SessionLine] = TypeAdapter(SessionLine)
_IMPORTED: TypeAdapter[ImportResult] = TypeAdapter(ImportResult)


def _parse(adapter: TypeAdapter[T], body: bytes) -> T:
    return adapter.validate_json(body, extra='ignore')


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; `cursor` is None on the last one."""

    items: list[T]
    cursor: str | None


def _session_path(session_id: str) -> str:
    """The session's path; an id the server would refuse (or a URL could not carry) is refused here, unsent."""
    if not is_session_id(session_id):
        raise InvalidSessionId('a session id is 1-128 characters of A-Z a-z 0-9 _ - . :, other than . and ..')
    return f'{API}/sessions/{session_id}'


def _query(**values: str | int | bool | None) -> dict[str, str | int]:
    """Query parameters without the ones left out (None); booleans as the server reads them."""
    return {
        name: ('true' if value else 'false') if isinstance(value, bool) else value
        for name, value in values.items()
        if value is not None
    }


def _metadata_query(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A metadata filter as the server reads it: `metadata.<key>=<value>`."""
    return {f'metadata.{key}': value for key, value in (metadata or {}).items()}


def _next_cursor(answer: Answer) -> str | None:
    """The `cursor` of the `Link: <…>; rel="next"` header (the rest of the URL is the request's own)."""
    link = answer.headers.get('link')
    if link is None or 'rel="next"' not in link:
        return None
    url = link[link.index('<') + 1 : link.index('>')]
    for pair in url.partition('?')[2].split('&'):
        name, _, value = pair.partition('=')
        if name == 'cursor':
            return value
    return None


class AsyncMemsvcClient:
    """A client of one memsvc deployment. Use it as `async with AsyncMemsvcClient(url) as client:`, or call
    `aclose()` when done; it opens its connections in the event loop of its first call, and belongs to that loop.

    `api_key` is sent as `Authorization: Bearer <key>` (the key names the tenant); `timeout` is the seconds one
    attempt may take; `retries` bounds the attempts of one call (a `Retries`, or a number of attempts);
    `connections` caps the connections kept open to the server.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: Retries | int = DEFAULT_RETRIES,
        connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        policy = retries if isinstance(retries, Retries) else Retries(attempts=retries)
        self._transport = Transport(
            base_url, api_key, timeout=timeout, retries=policy, connections=connections, headers=headers
        )

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections. The client can be used again (it opens new ones)."""
        await self._transport.close()

    async def _send(self, method: str, path: str, body: Any = None, **options: Any) -> Answer:
        data = None if body is None else orjson.dumps(body)
        return await self._transport.request(method, path, body=data, **options)

    async def _keyed(self, method: str, path: str, body: Any, key: str | None, **options: Any) -> Answer:
        """A write sent with an Idempotency-Key (the caller's, or a new one), the same on every attempt."""
        headers = {'Idempotency-Key': key or new_idempotency_key(), **options.pop('headers', {})}
        return await self._send(method, path, body, headers=headers, **options)

    async def _unkeyed(self, method: str, path: str, body: Any = None, **options: Any) -> Answer:
        return await self._send(method, path, body, replay=Replay.UNSENT, **options)

    # --- sessions -------------------------------------------------------------------------------------------

    async def create_session(
        self, session_id: str | None = None, *, metadata: JsonObject | None = None, idempotency_key: str | None = None
    ) -> Session:
        """Create a session (a new id when `session_id` is None: derived from the Idempotency-Key, so a retry
        finds the same session). Raises `SessionExists` for an id that is taken."""
        body: dict[str, Any] = {'metadata': metadata or {}}
        if session_id is not None:
            _session_path(session_id)
            body['id'] = session_id
        return _parse(_SESSION, (await self._keyed('POST', f'{API}/sessions', body, idempotency_key)).body)

    async def get_session(self, session_id: str) -> Session:
        """The session with all its messages."""
        return (await self.get_versioned(session_id)).value

    async def get_versioned(self, session_id: str) -> Versioned[Session]:
        """The session with its ETag, for a write with `if_match=`."""
        answer = await self._send('GET', _session_path(session_id))
        return Versioned(_parse(_SESSION, answer.body), answer.etag or '*')

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_messages: bool | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[Session]:
        """One page of sessions, newest `updated_at` first; pass its `cursor` for the next (with the same
        `metadata`). `metadata={"user_id": "alice"}`: only the sessions whose metadata holds every one of these
        string values, under keys the server indexes (`MEMSVC_INDEXED_METADATA`; another key: `ApiError`
        `invalid_parameter`)."""
        params = {
            **_query(limit=limit, cursor=cursor, include_messages=include_messages),
            **_metadata_query(metadata),
        }
        answer = await self._send('GET', f'{API}/sessions', params=params)
        return Page(_parse(_SESSIONS, answer.body), _next_cursor(answer))

    async def sessions(
        self, *, page_size: int | None = None, include_messages: bool = False, metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[Session]:
        """Every session of the tenant, newest first, page by page (`page_size` per request; the server's default
        100), or with `metadata` (as `list_sessions` takes it) those of one person. Without messages unless
        `include_messages`."""
        cursor: str | None = None
        while True:
            page = await self.list_sessions(
                limit=page_size, cursor=cursor, include_messages=include_messages, metadata=metadata
            )
            for session in page.items:
                yield session
            if page.cursor is None:
                return
            cursor = page.cursor

    async def update_metadata(self, session_id: str, patch: JsonObject, *, if_match: IfMatch | None = None) -> Session:
        """Merge `patch` into the metadata (a JSON merge patch: null deletes a key). With `if_match`, only if the
        session is at that version (`PreconditionFailed` otherwise)."""
        answer = await self._unkeyed(
            'PATCH', _session_path(session_id), {'metadata': patch}, headers=if_match_header(if_match)
        )
        return _parse(_SESSION, answer.body)

    async def modify(
        self,
        session_id: str,
        fn: Callable[[JsonObject], JsonObject | Awaitable[JsonObject]],
        *,
        attempts: int = 100,
    ) -> Session:
        """Read the session's metadata, give a copy to `fn`, and write what `fn` returns as the new metadata, only if
        nobody wrote the session in between (`If-Match`); on a conflict, read and apply again, up to `attempts`
        times. `fn` may be a coroutine function; it may run more than once, so it should only compute.

        A write whose answer was lost (a timeout, a broken connection, a 503) is sent again with the same
        `If-Match`: if the first did land, the second is refused (412), and the session is then found at the
        next version holding exactly what was written: that counts as done, and `fn` does not run again."""
        path = _session_path(session_id)
        for _ in range(attempts):
            read = await self.get_versioned(session_id)
            metadata = read.value['metadata']
            result = fn(orjson.loads(orjson.dumps(metadata)))
            wanted = await result if inspect.isawaitable(result) else result
            patch = metadata_patch(metadata, wanted)
            headers = {'If-Match': read.etag}
            try:
                answer = await self._send('PATCH', path, {'metadata': patch}, headers=headers)
            except PreconditionFailed:
                again = await self.get_versioned(session_id)
                if again.version == read.version + 1 and again.value['metadata'] == merge_patch(metadata, patch):
                    return again.value  # our own write, whose first answer was lost
                continue
            return _parse(_SESSION, answer.body)
        raise PreconditionFailed(f'session {session_id!r} changed under each of {attempts} attempts')

    async def delete_session(self, session_id: str, *, if_match: IfMatch | None = None) -> None:
        """Delete the session, its messages and its summary."""
        await self._unkeyed('DELETE', _session_path(session_id), headers=if_match_header(if_match))

    async def erase(
        self,
        /,
        metadata: Mapping[str, str] | None = None,
        *,
        timeout: float = 300.0,  # noqa: ASYNC109  (per attempt: the transport's, as for every call)
        **filters: str,
    ) -> int:
        """Erase one person's sessions: every session whose metadata holds all of these string values under indexed
        keys (`erase(user_id='123')`, or `erase(metadata={'user_id': '123'})`, also for a key that is not a Python
        name), with their messages, summaries and idempotency records; how many went. Without a filter it refuses,
        unsent. Retried like a read (after a failure the same erasure finishes the job; the count is then the last
        attempt's); `timeout` is per attempt, long enough for many thousands of sessions."""
        wanted = {**(metadata or {}), **filters}
        if not wanted:
            raise InvalidParameter('metadata.<key>: an erasure needs at least one filter, never "every session"')
        params = {f'metadata.{key}': value for key, value in wanted.items()}
        answer = await self._send('DELETE', f'{API}/sessions', params=params, timeout=timeout)
        return _parse(_ERASED, answer.body)['deleted']

    async def fork(
        self,
        session_id: str,
        new_id: str | None = None,
        *,
        through_id: int | None = None,
        metadata: JsonObject | None = None,
        include_messages: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """A new session holding the messages up to `through_id` (default: the last), all or nothing; its
        `forked_from` names the source. `metadata` defaults to the source's."""
        body: dict[str, Any] = {}
        if new_id is not None:
            _session_path(new_id)
            body['id'] = new_id
        if through_id is not None:
            body['through_id'] = through_id
        if metadata is not None:
            body['metadata'] = metadata
        params = _query(include_messages=include_messages)
        answer = await self._keyed('POST', f'{_session_path(session_id)}/fork', body, idempotency_key, params=params)
        return _parse(_SESSION, answer.body)

    # --- messages -------------------------------------------------------------------------------------------

    async def append(
        self,
        session_id: str,
        message: NewMessage,
        *,
        if_match: IfMatch | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Append one message (creating the session if it does not exist, unless `if_match`); what was stored."""
        path = f'{_session_path(session_id)}/messages'
        answer = await self._keyed('POST', path, message, idempotency_key, headers=if_match_header(if_match))
        return _parse(_MESSAGE, answer.body)

    async def append_many(
        self,
        session_id: str,
        messages: Sequence[NewMessage],
        *,
        if_match: IfMatch | None = None,
        idempotency_key: str | None = None,
    ) -> list[Message]:
        """Append 1 to `MEMSVC_MAX_BATCH` messages atomically (a gateway's user + assistant turn is one call)."""
        path = f'{_session_path(session_id)}/messages'
        answer = await self._keyed('POST', path, list(messages), idempotency_key, headers=if_match_header(if_match))
        return _parse(_MESSAGES, answer.body)

    async def get_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before: int | None = None,
        after: int | None = None,
        wait: int | None = None,
    ) -> list[Message]:
        """Messages, oldest first: all, the last `limit`, those below `before`, or the first `limit` above `after`.
        With `wait` (1-60 s, and `after`) a long-poll: when nothing follows `after`, the answer comes as soon as
        something is written, or is `[]` after `wait` seconds."""
        params = _query(limit=limit, before=before, after=after, wait=wait)
        timeout = None if wait is None else self._transport.timeout + wait
        answer = await self._send('GET', f'{_session_path(session_id)}/messages', params=params, timeout=timeout)
        return _parse(_MESSAGES, answer.body)

    async def messages(self, session_id: str, *, after: int = 0, page_size: int = 1000) -> AsyncIterator[Message]:
        """Every message after `after`, oldest first, read `page_size` at a time; ends at the last stored."""
        while True:
            page = await self.get_messages(session_id, after=after, limit=page_size)
            for message in page:
                yield message
            if len(page) < page_size:
                return
            after = page[-1]['id']

    async def get_message(self, session_id: str, message_id: int) -> Message:
        """One message; `MessageNotFound` when the session does not store that id."""
        return _parse(_MESSAGE, (await self._send('GET', f'{_session_path(session_id)}/messages/{message_id}')).body)

    async def delete_message(self, session_id: str, message_id: int, *, if_match: IfMatch | None = None) -> None:
        """Remove one message; its id is never given again."""
        path = f'{_session_path(session_id)}/messages/{message_id}'
        await self._unkeyed('DELETE', path, headers=if_match_header(if_match))

    async def pop(self, session_id: str) -> Message | None:
        """Remove the newest message and answer it (None when the session has none). Concurrent pops each get a
        message of their own: one that another took first is passed over for the next newest."""
        while True:
            newest = await self.get_messages(session_id, limit=1)
            if not newest:
                return None
            try:
                await self.delete_message(session_id, newest[0]['id'])
            except MessageNotFound:
                continue
            return newest[0]

    async def clear_messages(self, session_id: str, *, if_match: IfMatch | None = None) -> None:
        """Remove every message and the summary; the session and its metadata stay."""
        await self._unkeyed('DELETE', f'{_session_path(session_id)}/messages', headers=if_match_header(if_match))

    async def truncate(self, session_id: str, after: int, *, if_match: IfMatch | None = None) -> int:
        """Remove every message with an id above `after` (edit and regenerate); how many went."""
        path = f'{_session_path(session_id)}/messages'
        answer = await self._unkeyed('DELETE', path, headers=if_match_header(if_match), params={'after': after})
        return _parse(_TRUNCATED, answer.body)['deleted']

    def events(
        self, session_id: str, *, after: int | None = None, read_timeout: float = 60.0
    ) -> AsyncGenerator[Event, None]:
        """The session's changes as they happen (`GET …/events`), from the first message after `after` (default:
        the next one written). The stream reconnects by itself after a dropped connection or a server restart,
        resuming after the last message it gave (nothing missed, nothing twice), within the client's
        `Retries.deadline` per outage; it ends after a `deleted` event. `read_timeout` bounds a silence (the
        server sends a comment every 15 s)."""
        return EventStream(self._transport, _session_path(session_id), after, read_timeout, self._newest).run()

    async def _newest(self, path: str) -> int:
        newest = _parse(_MESSAGES, (await self._send('GET', f'{path}/messages', params={'limit': 1})).body)
        return newest[-1]['id'] if newest else 0

    # --- the context window, the summary, search ------------------------------------------------------------

    async def context(
        self,
        session_id: str,
        *,
        max_tokens: int | None = None,
        format: Format | None = None,
        encoding: Encoding | None = None,
    ) -> ContextWindowBody:
        """The newest history that fits `max_tokens`, in a provider's request shape (`format`, default openai)."""
        params = _query(max_tokens=max_tokens, format=format, encoding=encoding)
        return _parse(_CONTEXT, (await self._send('GET', f'{_session_path(session_id)}/context', params=params)).body)

    async def set_summary(
        self,
        session_id: str,
        content: str,
        through_id: int,
        *,
        if_match: IfMatch | None = None,
        idempotency_key: str | None = None,
    ) -> SummaryBody:
        """Set the summary of the messages up to `through_id` (which must be stored), replacing any."""
        body = {'content': content, 'through_id': through_id}
        path = f'{_session_path(session_id)}/summary'
        answer = await self._keyed('PUT', path, body, idempotency_key, headers=if_match_header(if_match))
        return _parse(_SUMMARY, answer.body)

    async def get_summary(self, session_id: str) -> SummaryBody:
        """The summary; `SummaryNotFound` when none is set."""
        return _parse(_SUMMARY, (await self._send('GET', f'{_session_path(session_id)}/summary')).body)

    async def delete_summary(
        self, session_id: str, *, if_match: IfMatch | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._keyed('DELETE', f'{_session_path(session_id)}/summary', None, idempotency_key,
                          headers=if_match_header(if_match))  # fmt: skip

    async def search(
        self, query: str, *, session_id: str | None = None, limit: int | None = None, role: str | None = None
    ) -> list[SearchHitBody]:
        """Semantic search over message content, best first (the Chroma store; `NotSupported` on the others)."""
        path = f'{API}/search' if session_id is None else f'{_session_path(session_id)}/search'
        answer = await self._send('GET', path, params=_query(q=query, limit=limit, role=role))
        return _parse(_HITS, answer.body)

    # --- export and import -----------------------------------------------------------------------------------

    async def export_lines(
        self, *, read_timeout: float = 300.0, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The tenant's sessions as the export's NDJSON lines (bytes, each with its newline), newest first, as they
        arrive: write them to a file, or hand them to `import_lines` of another deployment; with `metadata` (as
        `list_sessions` takes it), only the matching sessions. An export cut short (the server closes the connection
        on a failure) raises `TransportError`: no cut export passes for a whole one."""
        path = f'{API}/export' + ('?' + urllib.parse.urlencode(_metadata_query(metadata)) if metadata else '')
        async with self._transport.stream(path, {}, read_timeout) as reply:
            pending = b''
            try:
                async for chunk in reply.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b'\n')
                    for line in lines:
                        yield line + b'\n'
            except aiohttp.ClientError as exc:
                raise TransportError(f'the export did not arrive whole: {type(exc).__name__}') from exc
            if pending:
                yield pending

    async def export(
        self, *, read_timeout: float = 300.0, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[SessionLine, None]:
        """`export_lines` as the server's `SessionLine`s (each session whole in memory, as it is parsed)."""
        async for line in self.export_lines(read_timeout=read_timeout, metadata=metadata):
            yield _parse(_LINE, line)

    async def import_lines(
        self, lines: Iterable[bytes] | AsyncIterable[bytes], *, on_conflict: Literal['keep', 'replace'] = 'keep'
    ) -> ImportResult:
        """Import NDJSON lines as the export writes them (streamed: nothing holds the whole), each session all or
        nothing: what became of each line. Not retried by itself; importing the same lines again skips the sessions
        that went in (`on_conflict='replace'` writes every line that passes its checks)."""

        async def chunks() -> AsyncIterator[bytes]:
            if isinstance(lines, AsyncIterable):
                async for line in lines:
                    yield line if line.endswith(b'\n') else line + b'\n'
            else:
                for line in lines:
                    yield line if line.endswith(b'\n') else line + b'\n'

        answer = await self._transport.upload(
            f'{API}/import', {'on_conflict': on_conflict}, chunks(), 'application/x-ndjson'
        )
        return _parse(_IMPORTED, answer.body)

    # --- operations -----------------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Whether the server answers and its store does (`/readyz`); one attempt, no retries."""
        try:
            await self._transport.request('GET', '/readyz', retries=NO_RETRIES)
        except ApiError:
            return False
        return True

    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        document: dict[str, Any] = (await self._send('GET', '/api/v1/openapi.json')).json()
        return document
