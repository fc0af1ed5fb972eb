"""Sessions: list, create, read, update, delete, fork."""

from aiohttp import web

from memsvc.appkeys import MANAGER, SETTINGS, TENANT
from memsvc.declare import JsonBody, Operation, QueryFamily, Reply, ResponseHeader, bool_query, int_query, text_query
from memsvc.errors import InvalidParameter
from memsvc.models import Erased, NewFork, NewSession, Session, StoredSession, Success
from memsvc.routes.common import (
    API,
    ETAG,
    FEWER_SESSIONS,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    NEW_SESSION,
    SESSION,
    SESSION_ID,
    SESSION_OVERHEAD_BYTES,
    SESSION_PATCH,
    SUCCESS,
    bounded,
    etag,
    json_response,
    routes,
    session_body,
)
from memsvc.settings import MIN_RESPONSE_BYTES

LIST_LIMIT = int_query('limit', 1, 1000, default=100, description='page size')
CURSOR = text_query(
    'cursor',
    schema={'type': 'string', 'minLength': 1, 'pattern': '^[A-Za-z0-9_-]+$'},
    description='opaque; only from the Link header of the previous page',
)  # the manager decodes it and answers a bad one
INCLUDE_MESSAGES = bool_query('include_messages', default=True, description='false: no messages')
INCLUDE_MESSAGE_COUNT = bool_query(
    'include_message_count', default=False, description='true: each session with `message_count`, the messages stored'
)
METADATA = QueryFamily(
    'metadata.',
    lambda settings: settings.indexed_keys(),
    schema={'type': 'string'},
    description='only the sessions whose metadata has this string under `{key}` (an indexed key, '
    'MEMSVC_INDEXED_METADATA); several filters: all of them',
)
LINK = ResponseHeader('Link', '`<url>; rel="next"` when more sessions follow')
LOCATION = ResponseHeader('Location', 'the path of the new session')


@routes.get(
    f'{API}/sessions',
    Operation(
        'listSessions',
        'List sessions, newest updated_at first; or those of one person, by metadata',
        {200: Reply(list[Session], 'a page of sessions', (LINK,))},
        errors=(400, 401),
        params=(LIST_LIMIT, CURSOR, INCLUDE_MESSAGES, INCLUDE_MESSAGE_COUNT, METADATA),
        description='`metadata.<key>=<value>` lists only the sessions whose metadata holds that string value under '
        'an indexed key (MEMSVC_INDEXED_METADATA, default `user_id`), found through the metadata index, in the same '
        'order and pages; a key that is not indexed is 400 `invalid_parameter` naming the indexed ones. A value that '
        'is not a string (a number, null, an object) is not indexed and matches no filter.',
    ),
)
async def list_sessions(request: web.Request) -> web.Response:
    limit = LIST_LIMIT.get(request)
    with_messages = INCLUDE_MESSAGES.get(request)
    manager = request.app[MANAGER]
    filters = METADATA.get(request, request.app[SETTINGS].indexed_keys())
    sessions, next_cursor = await manager.list_sessions(
        request[TENANT], limit=limit, cursor=CURSOR.get(request), with_messages=with_messages, filters=filters
    )
    size = sum(len(found.messages) + len(found.record.metadata) + SESSION_OVERHEAD_BYTES for found in sessions)
    bounded(request, size, FEWER_SESSIONS)
    headers = None
    if next_cursor is not None:
        headers = {'Link': f'<{request.rel_url.update_query(cursor=next_cursor)}>; rel="next"'}
    bodies = [session_body(found) for found in sessions]
    if INCLUDE_MESSAGE_COUNT.get(request):
        counts = await manager.message_counts(request[TENANT], [found.record.id for found in sessions])
        for body, count in zip(bodies, counts, strict=True):
            body['message_count'] = count
    return json_response(bodies, headers=headers)


@routes.delete(
    f'{API}/sessions',
    Operation(
        'eraseSessions',
        "Erase one person's sessions: every session whose metadata holds the filters' values",
        {200: Reply(Erased, 'how many sessions went')},
        errors=(400, 401),
        params=(METADATA,),
        description='`metadata.<key>=<value>` (at least one; several: all of them) selects the sessions as the '
        'filtered listing does, through the metadata index; each goes with its messages, summary, vectors (Chroma), '
        'index entries and the idempotency records of its writes (a single DELETE keeps those). Without a filter: 400 '
        '`invalid_parameter`, never "every session"; a key that is not indexed is 400 naming the indexed ones. The '
        'sessions go in steps of MEMSVC_ERASE_BATCH, other requests running between them; `deleted` counts this '
        'request\'s. After a failure (503, a lost answer) send it again: it finishes the job (README, "Erasing one '
        'person\'s sessions"). Open streams of an erased session get `deleted`, as after a DELETE of it.',
    ),
)
async def erase_sessions(request: web.Request) -> web.Response:
    keys = request.app[SETTINGS].indexed_keys()
    filters = METADATA.get(request, keys)
    if not filters:
        names = ', '.join(f'{METADATA.prefix}{key}=<value>' for key in keys)
        raise InvalidParameter(f'{METADATA.prefix}<key>', f'an erasure needs at least one filter ({names})')
    deleted = await request.app[MANAGER].erase_sessions(request[TENANT], filters)
    return json_response({'deleted': deleted})


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
    headers = {'Location': f'{API}/sessions/{created.record.id}', **etag(created.record.version)}
    return json_response(session_body(created), status=201, headers=headers)


@routes.get(
    SESSION,
    Operation(
        'getSession',
        'A session with all its messages',
        {200: Reply(Session, 'the session', (ETAG,))},
        errors=(400, 401, 404),
        params=(SESSION_ID, INCLUDE_MESSAGES),
    ),
)
async def get_session(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    # most reads have no query string: then there is none to parse (a MultiDict built per request otherwise)
    with_messages = INCLUDE_MESSAGES.get(request) if request.rel_url.raw_query_string else True
    found = await request.app[MANAGER].get_session(request[TENANT], session_id, with_messages=with_messages)
    size = len(found.messages) + len(found.record.metadata) + SESSION_OVERHEAD_BYTES
    if size > MIN_RESPONSE_BYTES:
        bounded(request, size, f'read its messages in pages with GET {API}/sessions/<id>/messages?limit=N&before=<id>')
    return json_response(session_body(found), headers=etag(found.record.version))


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
    return json_response(session_body(updated), headers=etag(updated.record.version))


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
    return web.Response(body=SUCCESS, content_type='application/json')


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
    headers = {'Location': f'{API}/sessions/{record.id}', **etag(record.version)}
    return json_response(session_body(forked), status=201, headers=headers)
