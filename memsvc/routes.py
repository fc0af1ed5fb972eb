"""HTTP handlers: parse and check the request, call the manager, write JSON. No storage code here.

Each handler is declared once, in its decorator: its parameters, headers, body and answers, which the
handler reads through and `openapi.py` documents (see `declare.py`).
"""

import asyncio
import re
from typing import Any, cast

import orjson
from aiohttp import web

from memsvc.appkeys import HUB, MANAGER, METRICS, OPENAPI_JSON, SETTINGS, TENANT
from memsvc.context import message_id
from memsvc.declare import (
    Header,
    JsonBody,
    Operation,
    PathParam,
    Reply,
    ResponseHeader,
    RouteTable,
    bool_query,
    choice_query,
    int_query,
    nonblank_text_query,
    parse_int,
    text_query,
)
from memsvc.errors import BackendUnavailable, InvalidHeader, InvalidParameter, ResponseTooLarge
from memsvc.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from memsvc.models import (
    ROLES,
    SESSION_ID_PATTERN,
    ContextWindowBody,
    Message,
    NewFork,
    NewMessage,
    NewMessages,
    NewSession,
    NewSummary,
    SearchHitBody,
    Session,
    SessionPatch,
    Status,
    StoredSession,
    Success,
    SummaryBody,
    TruncatedBody,
    json_array,
    require_session_id,
)
from memsvc.render import FORMATS, Format
from memsvc.settings import MIN_RESPONSE_BYTES
from memsvc.sse import EventStream, wait_for_messages
from memsvc.stores.base import ANY_VERSION, MessageRange
from memsvc.tokens import DEFAULT_ENCODING, ENCODINGS, EncodingName

API = '/api/v1/chat'
SESSION = API + '/sessions/{session_id:[^/]+}'  # any segment reaches the handler, which answers 400 for a bad id
MAX_ID = 2**53 - 1
MAX_QUERY_CHARS = 2000
READY_TIMEOUT_SECONDS = 2.0

routes = RouteTable()
_SUCCESS = orjson.dumps({'success': True})


# --- what the routes share -------------------------------------------------------------------

SESSION_ID = PathParam(
    'session_id', SESSION_ID_PATTERN, require_session_id, description='the session id'
)  # checked before the body is read; the manager checks it again
IF_MATCH = Header(
    'If-Match',
    r'\*|"([0-9]{1,18})"',
    lambda match: ANY_VERSION if match.group(1) is None else int(match.group(1)),
    description='only if the session is at this version (an ETag, e.g. "3"), or exists (*); 412 otherwise',
    problem='give one ETag as the server sent it, e.g. "3", or *',
    strip=True,
)
IDEMPOTENCY_KEY = Header(
    'Idempotency-Key',
    r'[\x21-\x7e]{1,255}',
    lambda match: match.group(0),
    description='a retry with the same key and body returns the first answer and writes nothing again '
    '(remembered MEMSVC_IDEMPOTENCY_TTL_SECONDS, per session)',
    problem='1 to 255 visible ASCII characters, e.g. a uuid4',
)
NEW_MESSAGE: JsonBody[NewMessage] = JsonBody(NewMessage)
NEW_MESSAGES: JsonBody[list[NewMessage]] = JsonBody(NewMessages)
NEW_SESSION: JsonBody[NewSession] = JsonBody(NewSession, required=False)
SESSION_PATCH: JsonBody[SessionPatch] = JsonBody(SessionPatch)
ETAG = ResponseHeader('ETag', 'the session version after this request, e.g. "3"')


SESSION_OVERHEAD_BYTES = 400
"""An upper bound of what a session's answer holds besides its messages and metadata (id, timestamps, keys)."""
_FEWER_SESSIONS = 'ask for fewer sessions with a smaller limit, or leave the messages out with include_messages=false'


def _bounded(request: web.Request, size: int, advice: str) -> None:
    """Refuse an answer over `MEMSVC_MAX_RESPONSE_BYTES` before it is encoded: a client that does not read
    its answer holds it in this process's memory until the connection closes."""
    if size <= MIN_RESPONSE_BYTES:  # within any bound (most answers): the settings need not be looked up
        return
    limit = request.app[SETTINGS].max_response_bytes
    if size > limit:
        raise ResponseTooLarge(limit, advice)


def _etag(version: int) -> dict[str, str]:
    return {'ETag': f'"{version}"'}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(payload, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type='application/json', headers=headers)


def _session(found: StoredSession) -> dict[str, Any]:
    record = found.record
    session = {
        'id': record.id,
        'created_at': record.created_at,
        'updated_at': record.updated_at,
        'messages': orjson.Fragment(found.messages),
        'metadata': orjson.Fragment(record.metadata),
    }
    if record.forked_from:
        session['forked_from'] = orjson.Fragment(record.forked_from)
    return session


# --- sessions --------------------------------------------------------------------------------

LIST_LIMIT = int_query('limit', 1, 1000, default=100, description='page size')
CURSOR = text_query(
    'cursor',
    schema={'type': 'string', 'minLength': 1, 'pattern': '^[A-Za-z0-9_-]+$'},
    description='opaque; only from the Link header of the previous page',
)  # the manager decodes it and answers a bad one
INCLUDE_MESSAGES = bool_query('include_messages', default=True, description='false: no messages')
LINK = ResponseHeader('Link', '`<url>; rel="next"` when more sessions follow')
LOCATION = ResponseHeader('Location', 'the path of the new session')


@routes.get(
    f'{API}/sessions',
    Operation(
        'listSessions',
        'List sessions, newest updated_at first',
        {200: Reply(list[Session], 'a page of sessions', (LINK,))},
        errors=(400, 401),
        params=(LIST_LIMIT, CURSOR, INCLUDE_MESSAGES),
    ),
)
async def list_sessions(request: web.Request) -> web.Response:
    limit = LIST_LIMIT.get(request)
    with_messages = INCLUDE_MESSAGES.get(request)
    sessions, next_cursor = await request.app[MANAGER].list_sessions(
        request[TENANT], limit=limit, cursor=CURSOR.get(request), with_messages=with_messages
    )
    size = sum(len(found.messages) + len(found.record.metadata) + SESSION_OVERHEAD_BYTES for found in sessions)
    _bounded(request, size, _FEWER_SESSIONS)
    headers = None
    if next_cursor is not None:
        headers = {'Link': f'<{request.rel_url.update_query(cursor=next_cursor)}>; rel="next"'}
    return _json([_session(found) for found in sessions], headers=headers)


@routes.post(
    f'{API}/sessions',
    Operation(
        'createSession',
        'Create a session; an empty body creates one with empty metadata',
        {201: Reply(Session, 'the new session', (LOCATION, ETAG))},
        errors=(400, 401, 409, 413, 415, 422),
        params=(IDEMPOTENCY_KEY,),
        body=(NEW_SESSION,),
    ),
)
async def create_session(request: web.Request) -> web.Response:
    raw = await NEW_SESSION.read(request)
    body = NewSession() if raw is None else NEW_SESSION.parse(raw)
    key = IDEMPOTENCY_KEY.get(request)
    created = await request.app[MANAGER].create_session(request[TENANT], body, idempotency_key=key)
    headers = {'Location': f'{API}/sessions/{created.record.id}', **_etag(created.record.version)}
    return _json(_session(created), status=201, headers=headers)


@routes.get(
    SESSION,
    Operation(
        'getSession',
        'A session with all its messages',
        {200: Reply(Session, 'the session', (ETAG,))},
        errors=(400, 401, 404),
        params=(SESSION_ID,),
    ),
)
async def get_session(request: web.Request) -> web.Response:
    found = await request.app[MANAGER].get_session(request[TENANT], SESSION_ID.get(request))
    size = len(found.messages) + len(found.record.metadata) + SESSION_OVERHEAD_BYTES
    if size > MIN_RESPONSE_BYTES:
        _bounded(request, size, f'read its messages in pages with GET {API}/sessions/<id>/messages?limit=N&before=<id>')
    return _json(_session(found), headers=_etag(found.record.version))


@routes.patch(
    SESSION,
    Operation(
        'updateSession',
        'Merge metadata (JSON merge patch: null deletes a key)',
        {200: Reply(Session, 'the session after the change', (ETAG,))},
        errors=(400, 401, 404, 412, 413, 415, 422),
        params=(SESSION_ID, IF_MATCH),
        body=(SESSION_PATCH,),
    ),
)
async def update_session(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    raw = await SESSION_PATCH.read(request)
    assert raw is not None
    patch = SESSION_PATCH.parse(raw)
    expected = IF_MATCH.get(request)
    updated = await request.app[MANAGER].update_metadata(
        request[TENANT], session_id, patch.metadata, expected_version=expected
    )
    return _json(_session(updated), headers=_etag(updated.record.version))


@routes.delete(
    SESSION,
    Operation(
        'deleteSession',
        'Delete a session and its messages',
        {200: Reply(Success, 'deleted')},
        errors=(400, 401, 404, 412),
        params=(SESSION_ID, IF_MATCH),
    ),
)
async def delete_session(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    await request.app[MANAGER].delete_session(request[TENANT], session_id, expected_version=IF_MATCH.get(request))
    return web.Response(body=_SUCCESS, content_type='application/json')


NEW_FORK: JsonBody[NewFork] = JsonBody(NewFork, required=False)


@routes.post(
    f'{SESSION}/fork',
    Operation(
        'forkSession',
        'Copy a session up to one message into a new session, all or nothing',
        {201: Reply(Session, 'the new session', (LOCATION, ETAG))},
        errors=(400, 401, 404, 409, 413, 415, 422),
        params=(SESSION_ID, IDEMPOTENCY_KEY, INCLUDE_MESSAGES),
        body=(NEW_FORK,),
        description='The messages up to `through_id` (default: the last) keep their ids, content, timestamps and '
        "token records; the next appended id follows `through_id`. The source's summary is copied when its "
        "`through_id` is at most the fork's. `forked_from` names the source and `through_id`. Nothing is visible "
        'before the whole copy is (README, "Forks"). 404 `session_not_found` (the source) or `message_not_found` '
        '(`through_id`); 409 `session_exists` when the new id is taken (also when it is taken while the copy runs), '
        '409 `fork_source_changed` when the source was cleared, deleted or trimmed past the copy meanwhile. Messages '
        'are left out of the answer (`[]`) with include_messages=false or when they would pass '
        'MEMSVC_MAX_RESPONSE_BYTES.',
    ),
)
async def fork_session(request: web.Request) -> web.Response:
    source_id = SESSION_ID.get(request)
    raw = await NEW_FORK.read(request)
    body = NewFork() if raw is None else NEW_FORK.parse(raw)
    forked = await request.app[MANAGER].fork_session(
        request[TENANT],
        source_id,
        body,
        idempotency_key=IDEMPOTENCY_KEY.get(request),
        with_messages=INCLUDE_MESSAGES.get(request),
    )
    record = forked.record
    if len(forked.messages) + len(record.metadata) + SESSION_OVERHEAD_BYTES > request.app[SETTINGS].max_response_bytes:
        forked = StoredSession(record, b'[]')  # made; too large to answer with its messages
    headers = {'Location': f'{API}/sessions/{record.id}', **_etag(record.version)}
    return _json(_session(forked), status=201, headers=headers)


# --- messages --------------------------------------------------------------------------------

MESSAGES_LIMIT = int_query('limit', 1, 10_000, description='at most this many')
BEFORE = int_query('before', 0, MAX_ID, description='only ids below this one')
AFTER = int_query('after', 0, MAX_ID, description='only ids above this one')
WAIT = int_query(
    'wait', 1, 60, description='with `after`: when no message follows it, wait up to this many seconds for one'
)


@routes.get(
    f'{SESSION}/messages',
    Operation(
        'getMessages',
        'Messages, oldest first',
        {200: Reply(list[Message], 'the messages')},
        errors=(400, 401, 404),
        params=(SESSION_ID, MESSAGES_LIMIT, BEFORE, AFTER, WAIT),
        description='Without `after`, `limit` takes the last N (below `before`); with `after`, the first N above it. '
        'With `wait` (and `after`), a long-poll: when no message follows `after`, the answer comes as soon as one '
        'is written (through any replica), or is `[]` after `wait` seconds. An unknown session is 404 at once.',
    ),
)
async def get_messages(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    selection = MessageRange(limit=MESSAGES_LIMIT.get(request), before=BEFORE.get(request), after=AFTER.get(request))
    wait = WAIT.get(request)
    if wait is not None:
        if selection.after is None:
            raise InvalidParameter('wait', 'give after=<the last id you have> with wait')
        app = request.app
        messages = await wait_for_messages(app[MANAGER], app[HUB], request[TENANT], session_id, selection, wait)
    else:
        messages = await request.app[MANAGER].get_messages(request[TENANT], session_id, selection)
    if len(messages) > MIN_RESPONSE_BYTES:  # the hot read: no call for the usual answer
        _bounded(request, len(messages), 'ask for fewer messages with limit, and page with before or after')
    return web.Response(body=messages, content_type='application/json')


@routes.post(
    f'{SESSION}/messages',
    Operation(
        'addMessages',
        'Append a message, or an array of messages atomically; creates the session if missing',
        {201: Reply(Message | list[Message], 'what was stored, in the shape sent', (ETAG,))},
        errors=(400, 401, 409, 412, 413, 415, 422),
        params=(SESSION_ID, IF_MATCH, IDEMPOTENCY_KEY),
        body=(NEW_MESSAGE, NEW_MESSAGES),
    ),
)
async def add_messages(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    raw = await NEW_MESSAGE.read(request)
    assert raw is not None
    batch = raw.lstrip()[:1] == b'['
    messages = NEW_MESSAGES.parse(raw) if batch else [NEW_MESSAGE.parse(raw)]
    appended = await request.app[MANAGER].add_messages(
        request[TENANT],
        session_id,
        messages,
        batch=batch,
        expected_version=IF_MATCH.get(request),
        idempotency_key=IDEMPOTENCY_KEY.get(request),
    )
    body = json_array(appended.messages) if batch else appended.messages[0]
    return web.Response(body=body, status=201, content_type='application/json', headers=_etag(appended.version))


@routes.delete(
    f'{SESSION}/messages',
    Operation(
        'clearMessages',
        'Remove all messages, or with `after` every message after that id; the session and its metadata stay',
        {200: Reply(Success | TruncatedBody, 'cleared; with `after`, how many were removed', (ETAG,))},
        errors=(400, 401, 404, 412),
        params=(SESSION_ID, IF_MATCH, AFTER),
        description='With `after` (edit and regenerate), the messages with a larger id go, and the summary if it '
        'covers one of them; the next message still gets a new id, after the highest ever given. Without it, '
        'every message and the summary go.',
    ),
)
async def clear_messages(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    after, expected = AFTER.get(request), IF_MATCH.get(request)
    manager = request.app[MANAGER]
    if after is None:
        version = await manager.clear_messages(request[TENANT], session_id, expected_version=expected)
        return web.Response(body=_SUCCESS, content_type='application/json', headers=_etag(version))
    done = await manager.truncate_messages(request[TENANT], session_id, after, expected_version=expected)
    return _json({'success': True, 'deleted': done.deleted}, headers=_etag(done.version))


def _message_id(raw: str) -> int:
    try:
        return parse_int(raw, 1, MAX_ID)
    except ValueError:
        raise InvalidParameter('message_id', f'a message id is an integer from 1 to {MAX_ID}') from None


MESSAGE = f'{SESSION}/messages/{{message_id:[^/]+}}'  # any segment reaches the handler, which answers 400 for a bad id
MESSAGE_ID = PathParam(
    'message_id',
    '',
    _message_id,
    description='the message id',
    schema={'type': 'integer', 'minimum': 1, 'maximum': MAX_ID},
)


@routes.get(
    MESSAGE,
    Operation(
        'getMessage',
        'One message, as the list of messages answers it',
        {200: Reply(Message, 'the message')},
        errors=(400, 401, 404),
        params=(SESSION_ID, MESSAGE_ID),
        description='404 `message_not_found` when the session stores no message with this id.',
    ),
)
async def get_message(request: web.Request) -> web.Response:
    session_id, message_id = SESSION_ID.get(request), MESSAGE_ID.get(request)
    message = await request.app[MANAGER].get_message(request[TENANT], session_id, message_id)
    return web.Response(body=message, content_type='application/json')


@routes.delete(
    MESSAGE,
    Operation(
        'deleteMessage',
        'Remove one message; its id is never given again',
        {200: Reply(Success, 'removed', (ETAG,))},
        errors=(400, 401, 404, 412),
        params=(SESSION_ID, MESSAGE_ID, IF_MATCH),
        description='404 `message_not_found` when the session stores no message with this id. The summary stays.',
    ),
)
async def delete_message(request: web.Request) -> web.Response:
    session_id, message_id = SESSION_ID.get(request), MESSAGE_ID.get(request)
    version = await request.app[MANAGER].delete_message(
        request[TENANT], session_id, message_id, expected_version=IF_MATCH.get(request)
    )
    return web.Response(body=_SUCCESS, content_type='application/json', headers=_etag(version))


def _last_event_id(match: 're.Match[str]') -> int:
    value = int(match.group(0))
    if value > MAX_ID:
        raise InvalidHeader('Last-Event-ID', LAST_EVENT_PROBLEM)
    return value


LAST_EVENT_PROBLEM = f'the id of a message: an integer from 0 to {MAX_ID}'
LAST_EVENT_ID = Header(
    'Last-Event-ID',
    r'[0-9]{1,16}',
    _last_event_id,
    description='resume after this message id (EventSource sends it when it reconnects); wins over `after`',
    problem=LAST_EVENT_PROBLEM,
    strip=True,
)
EVENTS_AFTER = int_query('after', 0, MAX_ID, description='resume after this message id (as Last-Event-ID)')


@routes.get(
    f'{SESSION}/events',
    Operation(
        'streamEvents',
        "The session's changes as Server-Sent Events",
        {200: Reply(None, 'the event stream', media_type='text/event-stream')},
        errors=(400, 401, 404, 503),
        params=(SESSION_ID, LAST_EVENT_ID, EVENTS_AFTER),
        description='`event: message` with `id: <message id>` and `data:` the message as stored (what GET '
        '…/messages answers for it), one line of JSON; `event: message_deleted` (`{"id"}`), `truncated` '
        '(`{"after"}`), `cleared` and `deleted` (`{}`; the stream ends after it). With `Last-Event-ID` (or '
        '`after`), the messages after that id come first; with neither, the stream starts with the next new '
        'message. A comment line after MEMSVC_STREAM_KEEPALIVE_SECONDS without an event. Writes through any '
        'replica of the same Redis reach the stream. 404 before the stream starts for an unknown session; 503 '
        '`too_many_streams` past MEMSVC_MAX_STREAMS open streams in this process.',
    ),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    session_id = SESSION_ID.get(request)
    resumed = LAST_EVENT_ID.get(request)
    after = EVENTS_AFTER.get(request)
    if resumed is not None:
        after = resumed
    app, tenant = request.app, request[TENANT]
    manager, hub = app[MANAGER], app[HUB]
    async with hub.listen(tenant, session_id, stream=True) as listener:
        if after is None:  # from the next new message: after the newest one stored now
            newest = await manager.read_messages(tenant, session_id, MessageRange(limit=1))
            after, first = (message_id(newest[-1]) if newest else 0), []
        else:
            first = await manager.read_messages(tenant, session_id, MessageRange(limit=500, after=after))
        stream = EventStream(request, manager, hub, listener, after, app[SETTINGS].stream_keepalive_seconds)
        return await stream.run(first)


# --- the context window and the summary ----------------------------------------------------

MAX_TOKENS = int_query('max_tokens', 1, 2_000_000, description='the token budget; without it, no budget')


FORMAT = choice_query(
    'format', FORMATS, default='openai', description="the shape of the messages: a provider's request, or as stored"
)
ENCODING = choice_query(
    'encoding', ENCODINGS, default=DEFAULT_ENCODING, description='the tokenizer the budget and `tokens` count with'
)
NEW_SUMMARY: JsonBody[NewSummary] = JsonBody(NewSummary)


@routes.get(
    f'{SESSION}/context',
    Operation(
        'getContext',
        "The newest history that fits a token budget, in a provider's request shape",
        {200: Reply(ContextWindowBody, 'the window')},
        errors=(400, 401, 404, 422),
        params=(SESSION_ID, MAX_TOKENS, FORMAT, ENCODING),
        description='The leading system/developer messages always, then the summary, then the newest messages '
        'that fit, an assistant message with tool calls and its tool results kept or dropped together. '
        '422 `context_budget_too_small` when the leading messages and the summary alone exceed `max_tokens`.',
    ),
)
async def get_context(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    max_tokens, format, encoding = MAX_TOKENS.get(request), FORMAT.get(request), ENCODING.get(request)
    window = await request.app[MANAGER].context(
        request[TENANT],
        session_id,
        max_tokens=max_tokens,
        format=cast(Format, format),
        encoding=cast(EncodingName, encoding),
    )
    body = window.to_json()
    if len(body) > MIN_RESPONSE_BYTES:
        _bounded(request, len(body), 'give max_tokens (or a smaller one)')
    return web.Response(body=body, content_type='application/json')


@routes.put(
    f'{SESSION}/summary',
    Operation(
        'setSummary',
        'Set the summary of the messages up to through_id (replacing any); the context window uses it',
        {200: Reply(SummaryBody, 'the summary as stored', (ETAG,))},
        errors=(400, 401, 404, 412, 413, 415, 422),
        params=(SESSION_ID, IF_MATCH, IDEMPOTENCY_KEY),
        body=(NEW_SUMMARY,),
        description='422 `through_id_not_stored` when no stored message has the id `through_id`.',
    ),
)
async def set_summary(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    raw = await NEW_SUMMARY.read(request)
    assert raw is not None
    body = NEW_SUMMARY.parse(raw)
    written = await request.app[MANAGER].set_summary(
        request[TENANT],
        session_id,
        body.content,
        body.through_id,
        expected_version=IF_MATCH.get(request),
        idempotency_key=IDEMPOTENCY_KEY.get(request),
    )
    return web.Response(body=written.summary, content_type='application/json', headers=_etag(written.version))


@routes.get(
    f'{SESSION}/summary',
    Operation(
        'getSummary',
        'The summary',
        {200: Reply(SummaryBody, 'the summary')},
        errors=(400, 401, 404),
        params=(SESSION_ID,),
        description='404 `summary_not_found` when the session has none.',
    ),
)
async def get_summary(request: web.Request) -> web.Response:
    summary = await request.app[MANAGER].get_summary(request[TENANT], SESSION_ID.get(request))
    return web.Response(body=summary, content_type='application/json')


@routes.delete(
    f'{SESSION}/summary',
    Operation(
        'deleteSummary',
        'Remove the summary; the messages stay',
        {200: Reply(Success, 'removed', (ETAG,))},
        errors=(400, 401, 404, 412, 422),
        params=(SESSION_ID, IF_MATCH, IDEMPOTENCY_KEY),
        description='404 `summary_not_found` when the session has none.',
    ),
)
async def delete_summary(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    version = await request.app[MANAGER].delete_summary(
        request[TENANT],
        session_id,
        expected_version=IF_MATCH.get(request),
        idempotency_key=IDEMPOTENCY_KEY.get(request),
    )
    return web.Response(body=_SUCCESS, content_type='application/json', headers=_etag(version))


# --- search ----------------------------------------------------------------------------------

QUERY_TEXT = nonblank_text_query('q', MAX_QUERY_CHARS, what='a search text', description='the text (not only spaces)')
SEARCH_LIMIT = int_query('limit', 1, 50, default=5, description='how many hits')
ROLE = text_query(
    'role',
    schema={'type': 'string', 'enum': list(ROLES)},
    description='only messages of this role',
    problem=f'must be one of {", ".join(ROLES)}',
    check=ROLES.__contains__,
)
SEARCH_SESSION_ID = text_query(
    'session_id', schema={'type': 'string', 'pattern': SESSION_ID_PATTERN}, description='only this session'
)  # the manager checks it
_SEARCH_DESCRIPTION = (
    'score is 1 - cosine distance (higher = more similar). 404 when the session to search '
    '(the path, or `session_id`) does not exist; 501 on a store without search.'
)
_SEARCH_SUMMARY = 'Semantic search over message content (Chroma backend), best first'
_HITS = {200: Reply(list[SearchHitBody], 'hits, best first')}


async def _search(request: web.Request, session_id: str | None) -> web.Response:
    query = QUERY_TEXT.get(request)
    assert query is not None
    hits = await request.app[MANAGER].search(
        request[TENANT], query, limit=SEARCH_LIMIT.get(request), session_id=session_id, role=ROLE.get(request)
    )
    _bounded(request, sum(len(hit.message) + SESSION_OVERHEAD_BYTES for hit in hits), 'ask for fewer with limit')
    return _json(
        [{'session_id': hit.session_id, 'message': orjson.Fragment(hit.message), 'score': hit.score} for hit in hits]
    )


@routes.get(
    f'{SESSION}/search',
    Operation(
        'searchSession',
        _SEARCH_SUMMARY,
        _HITS,
        errors=(400, 401, 404, 501),
        params=(SESSION_ID, QUERY_TEXT, SEARCH_LIMIT, ROLE),
        description=_SEARCH_DESCRIPTION,
    ),
)
async def search_session(request: web.Request) -> web.Response:
    return await _search(request, SESSION_ID.get(request))


@routes.get(
    f'{API}/search',
    Operation(
        'searchAll',
        _SEARCH_SUMMARY,
        _HITS,
        errors=(400, 401, 404, 501),
        params=(QUERY_TEXT, SEARCH_LIMIT, ROLE, SEARCH_SESSION_ID),
        description=_SEARCH_DESCRIPTION,
    ),
)
async def search_all(request: web.Request) -> web.Response:
    return await _search(request, SEARCH_SESSION_ID.get(request))


# --- operations ------------------------------------------------------------------------------


@routes.get(
    '/healthz', Operation('healthz', 'The process is alive', {200: Reply(Status, 'alive')}, store=False, open=True)
)
async def healthz(request: web.Request) -> web.Response:
    return _json({'status': 'ok'})


@routes.get(
    '/readyz',
    Operation('readyz', 'The backend answers', {200: Reply(Status, 'ready')}, errors=(503,), store=False, open=True),
)
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app[MANAGER].ping()
    except TimeoutError:
        raise BackendUnavailable(f'the store did not answer within {READY_TIMEOUT_SECONDS} s') from None
    return _json({'status': 'ready'})


@routes.get(
    '/metrics',
    Operation(
        'metrics',
        'Prometheus metrics (text format), for every worker process',
        {200: Reply(None, 'the metrics', media_type='text/plain')},
        store=False,
        open=True,
    ),
)
async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers['Content-Type'] = METRICS_CONTENT_TYPE
    return response


@routes.get(
    '/api/v1/openapi.json',
    Operation('openapi', 'This document', {200: Reply(None, 'the OpenAPI document')}, errors=(401,), store=False),
)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type='application/json')
