"""Semantic search over message content."""

import orjson
from aiohttp import web

from memsvc.appkeys import MANAGER, TENANT
from memsvc.declare import Operation, Reply, int_query, nonblank_text_query, text_query
from memsvc.models import ROLES, SESSION_ID_PATTERN, SearchHitBody
from memsvc.routes.common import (
    API,
    MAX_QUERY_CHARS,
    SESSION,
    SESSION_ID,
    SESSION_OVERHEAD_BYTES,
    bounded,
    json_response,
    routes,
)

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
    bounded(request, sum(len(hit.message) + SESSION_OVERHEAD_BYTES for hit in hits), 'ask for fewer with limit')
    return json_response(
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
