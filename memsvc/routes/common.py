"""What the HTTP handlers share: the route table, the path and header declarations, JSON answers."""

from typing import Any

import orjson
from aiohttp import web

from memsvc.appkeys import SETTINGS
from memsvc.declare import Header, JsonBody, PathParam, ResponseHeader, RouteTable
from memsvc.errors import ResponseTooLarge
from memsvc.models import (
    SESSION_ID_PATTERN,
    NewMessage,
    NewMessages,
    NewSession,
    SessionPatch,
    StoredSession,
    require_session_id,
)
from memsvc.settings import MIN_RESPONSE_BYTES
from memsvc.stores.base import ANY_VERSION

API = '/api/v1/chat'
SESSION = API + '/sessions/{session_id:[^/]+}'  # any segment reaches the handler, which answers 400 for a bad id
MAX_ID = 2**53 - 1
MAX_QUERY_CHARS = 2000
READY_TIMEOUT_SECONDS = 2.0

routes = RouteTable()
SUCCESS = orjson.dumps({'success': True})


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
FEWER_SESSIONS = 'ask for fewer sessions with a smaller limit, or leave the messages out with include_messages=false'


def bounded(request: web.Request, size: int, advice: str) -> None:
    """Refuse an answer over `MEMSVC_MAX_RESPONSE_BYTES` before it is encoded: a client that does not read
    its answer holds it in this process's memory until the connection closes."""
    if size <= MIN_RESPONSE_BYTES:  # within any bound (most answers): the settings need not be looked up
        return
    limit = request.app[SETTINGS].max_response_bytes
    if size > limit:
        raise ResponseTooLarge(limit, advice)


def etag(version: int) -> dict[str, str]:
    return {'ETag': f'"{version}"'}


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(payload, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type='application/json', headers=headers)


def session_body(found: StoredSession) -> dict[str, Any]:
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
