"""A session's messages: read, append, clear, truncate, one message at a time."""

from aiohttp import web

from memsvc.appkeys import HUB, MANAGER, TENANT
from memsvc.declare import Operation, PathParam, Reply, int_query, parse_int
from memsvc.errors import InvalidParameter
from memsvc.models import Message, Success, TruncatedBody, json_array
from memsvc.routes.common import (
    ETAG,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    MAX_ID,
    NEW_MESSAGE,
    NEW_MESSAGES,
    SESSION,
    SESSION_ID,
    SUCCESS,
    bounded,
    etag,
    json_response,
    routes,
)
from memsvc.settings import MIN_RESPONSE_BYTES
from memsvc.sse import wait_for_messages
from memsvc.stores.base import MessageRange

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
        bounded(request, len(messages), 'ask for fewer messages with limit, and page with before or after')
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
    return web.Response(body=body, status=201, content_type='application/json', headers=etag(appended.version))


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
        return web.Response(body=SUCCESS, content_type='application/json', headers=etag(version))
    done = await manager.truncate_messages(request[TENANT], session_id, after, expected_version=expected)
    return json_response({'success': True, 'deleted': done.deleted}, headers=etag(done.version))


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
    return web.Response(body=SUCCESS, content_type='application/json', headers=etag(version))
