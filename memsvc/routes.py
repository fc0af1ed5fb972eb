"""HTTP handlers: parse and check the request, call the manager, write JSON. No storage code here."""

import asyncio
import re
from typing import Any, TypeVar

import orjson
import pydantic
from aiohttp import web
from pydantic import TypeAdapter

from memsvc.appkeys import MANAGER, METRICS, OPENAPI_JSON, TENANT
from memsvc.errors import (
    BackendUnavailable,
    InvalidHeader,
    InvalidInput,
    InvalidParameter,
    MalformedJson,
    UnsupportedMediaType,
)
from memsvc.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from memsvc.models import ROLES, NewMessage, NewSession, SessionPatch, StoredSession, json_array, require_session_id
from memsvc.stores.base import ANY_VERSION, MessageRange

API = '/api/v1/chat'
SESSION = API + '/sessions/{session_id:[^/]+}'  # any segment reaches the handler, which answers 400 for a bad id
MAX_ID = 2**53 - 1
MAX_QUERY_CHARS = 2000
READY_TIMEOUT_SECONDS = 2.0

routes = web.RouteTableDef()
Model = TypeVar('Model')
_JSON_TYPE = re.compile(r'^application/([a-z0-9.+-]+\+)?json$')
_DIGITS = re.compile(r'[0-9]{1,16}')
_IF_MATCH = re.compile(r'\*|"([0-9]{1,18})"')
_IDEMPOTENCY_KEY = re.compile(r'[\x21-\x7e]{1,255}')
_NEW_MESSAGE = TypeAdapter(NewMessage)
_NEW_MESSAGES = TypeAdapter(list[NewMessage])
_NEW_SESSION = TypeAdapter(NewSession)
_SESSION_PATCH = TypeAdapter(SessionPatch)
_SUCCESS = orjson.dumps({'success': True})


# --- request parsing -------------------------------------------------------------------------


def _session_id(request: web.Request) -> str:
    """The path's session id, checked before the body is read (the manager checks it again)."""
    return require_session_id(request.match_info['session_id'])


def _query(request: web.Request, name: str) -> str | None:
    query = request.query
    if name not in query:
        return None
    values = query.getall(name)
    if len(values) > 1:
        raise InvalidParameter(name, 'give it at most once')
    return values[0]


def _int_query(request: web.Request, name: str, low: int, high: int, default: int | None = None) -> int | None:
    raw = _query(request, name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidParameter(name, f'must be an integer from {low} to {high}')
    return int(raw)


def _bool_query(request: web.Request, name: str, default: bool) -> bool:
    raw = _query(request, name)
    if raw is None:
        return default
    if raw not in ('true', 'false'):
        raise InvalidParameter(name, 'must be true or false')
    return raw == 'true'


async def _body(request: web.Request, *, optional: bool = False) -> bytes | None:
    raw = await request.read()  # raises 413 beyond MEMSVC_MAX_BODY_BYTES
    if not raw.strip():
        if optional:
            return None
        raise MalformedJson('the request needs a JSON body')
    if request.headers.get('Content-Type') != 'application/json' and not _JSON_TYPE.fullmatch(request.content_type):
        raise UnsupportedMediaType()
    return raw


def _validate(adapter: TypeAdapter[Model], raw: bytes) -> Model:
    try:
        return adapter.validate_json(raw)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(err['type'] == 'json_invalid' for err in errors):
            raise MalformedJson(f'the body is not valid JSON: {errors[0]["msg"]}') from None
        problems = [f'{_field(err["loc"])}: {err["msg"]}' for err in errors[:3]]
        raise InvalidInput('', '; '.join(problems)) from None


def _field(loc: tuple[int | str, ...]) -> str:
    out = ''
    for part in loc:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else part)
    return out or 'body'


# --- response writing ------------------------------------------------------------------------


def _if_match(request: web.Request) -> int | None:
    """The version an `If-Match` header asks for: `"<version>"` as sent in ETags, or `*` (any)."""
    raw = request.headers.get('If-Match')
    if raw is None:
        return None
    match = _IF_MATCH.fullmatch(raw.strip())
    if match is None:
        raise InvalidHeader('If-Match', 'give one ETag as the server sent it, e.g. "3", or *')
    return ANY_VERSION if match.group(1) is None else int(match.group(1))


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get('Idempotency-Key')
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidHeader('Idempotency-Key', '1 to 255 visible ASCII characters, e.g. a uuid4')
    return key


def _etag(version: int) -> dict[str, str]:
    return {'ETag': f'"{version}"'}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(payload, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, status=status, content_type='application/json', headers=headers)


def _session(found: StoredSession) -> dict[str, Any]:
    record = found.record
    return {
        'id': record.id,
        'created_at': record.created_at,
        'updated_at': record.updated_at,
        'messages': orjson.Fragment(found.messages),
        'metadata': orjson.Fragment(record.metadata),
    }


# --- sessions --------------------------------------------------------------------------------


@routes.get(f'{API}/sessions')
async def list_sessions(request: web.Request) -> web.Response:
    limit = _int_query(request, 'limit', 1, 1000, default=100)
    assert limit is not None
    with_messages = _bool_query(request, 'include_messages', True)
    sessions, next_cursor = await request.app[MANAGER].list_sessions(
        request[TENANT], limit=limit, cursor=_query(request, 'cursor'), with_messages=with_messages
    )
    headers = None
    if next_cursor is not None:
        headers = {'Link': f'<{request.rel_url.update_query(cursor=next_cursor)}>; rel="next"'}
    return _json([_session(found) for found in sessions], headers=headers)


@routes.post(f'{API}/sessions')
async def create_session(request: web.Request) -> web.Response:
    raw = await _body(request, optional=True)
    body = NewSession() if raw is None else _validate(_NEW_SESSION, raw)
    key = _idempotency_key(request)
    created = await request.app[MANAGER].create_session(request[TENANT], body, idempotency_key=key)
    headers = {'Location': f'{API}/sessions/{created.record.id}', **_etag(created.record.version)}
    return _json(_session(created), status=201, headers=headers)


@routes.get(f'{SESSION}')
async def get_session(request: web.Request) -> web.Response:
    found = await request.app[MANAGER].get_session(request[TENANT], _session_id(request))
    return _json(_session(found), headers=_etag(found.record.version))


@routes.patch(f'{SESSION}')
async def update_session(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    raw = await _body(request)
    assert raw is not None
    patch = _validate(_SESSION_PATCH, raw)
    expected = _if_match(request)
    updated = await request.app[MANAGER].update_metadata(
        request[TENANT], session_id, patch.metadata, expected_version=expected
    )
    return _json(_session(updated), headers=_etag(updated.record.version))


@routes.delete(f'{SESSION}')
async def delete_session(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    await request.app[MANAGER].delete_session(request[TENANT], session_id, expected_version=_if_match(request))
    return web.Response(body=_SUCCESS, content_type='application/json')


# --- messages --------------------------------------------------------------------------------


@routes.get(f'{SESSION}/messages')
async def get_messages(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    selection = MessageRange(
        limit=_int_query(request, 'limit', 1, 10_000),
        before=_int_query(request, 'before', 0, MAX_ID),
        after=_int_query(request, 'after', 0, MAX_ID),
    )
    messages = await request.app[MANAGER].get_messages(request[TENANT], session_id, selection)
    return web.Response(body=messages, content_type='application/json')


@routes.post(f'{SESSION}/messages')
async def add_messages(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    raw = await _body(request)
    assert raw is not None
    batch = raw.lstrip()[:1] == b'['
    messages = _validate(_NEW_MESSAGES, raw) if batch else [_validate(_NEW_MESSAGE, raw)]
    appended = await request.app[MANAGER].add_messages(
        request[TENANT],
        session_id,
        messages,
        batch=batch,
        expected_version=_if_match(request),
        idempotency_key=_idempotency_key(request),
    )
    body = json_array(appended.messages) if batch else appended.messages[0]
    return web.Response(body=body, status=201, content_type='application/json', headers=_etag(appended.version))


@routes.delete(f'{SESSION}/messages')
async def clear_messages(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    version = await request.app[MANAGER].clear_messages(
        request[TENANT], session_id, expected_version=_if_match(request)
    )
    return web.Response(body=_SUCCESS, content_type='application/json', headers=_etag(version))


# --- search ----------------------------------------------------------------------------------


async def _search(request: web.Request, session_id: str | None) -> web.Response:
    query = _query(request, 'q')
    if query is None or not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise InvalidParameter('q', f'give a search text of 1 to {MAX_QUERY_CHARS} characters, not only spaces')
    limit = _int_query(request, 'limit', 1, 50, default=5)
    assert limit is not None
    role = _query(request, 'role')
    if role is not None and role not in ROLES:
        raise InvalidParameter('role', f'must be one of {", ".join(ROLES)}')
    hits = await request.app[MANAGER].search(request[TENANT], query, limit=limit, session_id=session_id, role=role)
    return _json(
        [{'session_id': hit.session_id, 'message': orjson.Fragment(hit.message), 'score': hit.score} for hit in hits]
    )


@routes.get(f'{SESSION}/search')
async def search_session(request: web.Request) -> web.Response:
    return await _search(request, _session_id(request))


@routes.get(f'{API}/search')
async def search_all(request: web.Request) -> web.Response:
    return await _search(request, _query(request, 'session_id'))


# --- operations ------------------------------------------------------------------------------


@routes.get('/healthz')
async def healthz(request: web.Request) -> web.Response:
    return _json({'status': 'ok'})


@routes.get('/readyz')
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app[MANAGER].ping()
    except TimeoutError:
        raise BackendUnavailable(f'the store did not answer within {READY_TIMEOUT_SECONDS} s') from None
    return _json({'status': 'ready'})


@routes.get('/metrics')
async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers['Content-Type'] = METRICS_CONTENT_TYPE
    return response


@routes.get('/api/v1/openapi.json')
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type='application/json')
