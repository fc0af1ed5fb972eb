"""Route declarations are the one source of what a route takes: every handler reads exactly the parameters
and bodies its declaration lists (so the document lists exactly what the handler checks), and the
declaration style carries what part 2 needs (parameter families, non-JSON answers, another error shape)."""

import dis
import sys
import types
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import ConfigDict, with_config
from pytest_aiohttp import AiohttpClient
from typing_extensions import TypedDict

from memsvc.declare import JsonBody, LinesBody, Operation, QueryFamily, Reply, RouteTable, int_query
from memsvc.endpoint import endpoints, status_for
from memsvc.errors import InvalidParameter, MemsvcError
from memsvc.metrics import Metrics
from memsvc.openapi import build_openapi
from memsvc.routes import LIST_LIMIT, routes
from memsvc.settings import Settings
from tests.conformance import Conformance


def _read_by(function: types.FunctionType, module: types.ModuleType) -> Iterator[object]:
    """The module-level declarations `function` names, and those of the module's functions it calls."""
    for instruction in dis.get_instructions(function):
        if instruction.opname != 'LOAD_GLOBAL':
            continue
        value = getattr(module, instruction.argval, None)
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            yield from _read_by(value, module)
        elif hasattr(value, 'document') or isinstance(value, JsonBody | LinesBody):
            yield value


def _mismatches(table: RouteTable) -> list[str]:
    found = []
    for declared in table.declared:
        assert isinstance(declared.handler, types.FunctionType)
        module = sys.modules[declared.handler.__module__]
        read = {id(item) for item in _read_by(declared.handler, module)}
        listed = {id(item) for item in (*declared.operation.params, *declared.operation.body)}
        if read != listed:
            found.append(f'{declared.method} {declared.path}')
    return found


def test_every_handler_reads_exactly_what_its_route_declares() -> None:
    assert len(routes.declared) >= 14
    assert _mismatches(routes) == []


def test_a_parameter_read_without_being_declared_is_caught() -> None:
    table = RouteTable()

    @table.get('/undeclared', Operation('undeclared', 'reads a limit it does not declare', {200: Reply(None, 'ok')}))
    async def undeclared(request: web.Request) -> web.Response:
        LIST_LIMIT.get(request)
        return web.Response()

    @table.get(
        '/unread',
        Operation('unread', 'declares a limit it does not read', {200: Reply(None, 'ok')}, params=(LIST_LIMIT,)),
    )
    async def unread(request: web.Request) -> web.Response:
        return web.Response()

    assert _mismatches(table) == ['GET /undeclared', 'GET /unread']


# --- what part 2 will declare ------------------------------------------------------------------


@with_config(ConfigDict(extra='forbid'))
class OpenAIErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str


@with_config(ConfigDict(extra='forbid', title='OpenAIError'))
class OpenAIErrorBody(TypedDict):
    error: OpenAIErrorDetail


def _openai_envelope(exc: MemsvcError) -> web.Response:
    param = exc.name if isinstance(exc, InvalidParameter) else None
    body = {'error': {'message': exc.message, 'type': 'invalid_request_error', 'param': param, 'code': exc.code}}
    return web.Response(status=status_for(exc), body=orjson.dumps(body), content_type='application/json')


FILTERS = QueryFamily(
    'metadata.',
    lambda settings: ['user_id'],
    schema={'type': 'string'},
    description='only sessions whose {key} is this',
)
V1_LIMIT = int_query('limit', 1, 100, default=20, description='page size')
v1 = RouteTable(error_body=OpenAIErrorBody, envelope=_openai_envelope)


@v1.get(
    '/v1/conversations',
    Operation(
        'listConversations',
        'Conversations, filtered',
        {200: Reply(list[dict[str, Any]], 'a page')},
        errors=(400, 401),
        params=(V1_LIMIT, FILTERS),
    ),
)
async def list_conversations(request: web.Request) -> web.Response:
    return web.json_response({'limit': V1_LIMIT.get(request), 'filters': FILTERS.get(request, ['user_id'])})


@v1.get('/v1/export', Operation('export', 'Everything', {200: Reply(None, 'lines', media_type='application/x-ndjson')}))
async def export(request: web.Request) -> web.Response:
    return web.Response(body=b'{}\n', content_type='application/x-ndjson')


def test_a_parameter_family_is_documented_per_allowed_key_and_read_as_a_dict() -> None:
    document = build_openapi(Settings(), (routes, v1))
    parameters = document['paths']['/v1/conversations']['get']['parameters']
    assert [(p['name'], p['in']) for p in parameters] == [('limit', 'query'), ('metadata.user_id', 'query')]
    request = make_mocked_request('GET', '/v1/conversations?metadata.user_id=7&limit=3')
    assert FILTERS.get(request, ['user_id']) == {'user_id': '7'}


def test_a_second_table_has_its_own_error_shape_and_media_types_in_the_document() -> None:
    document = build_openapi(Settings(), (routes, v1))
    errors = document['paths']['/v1/conversations']['get']['responses']['400']
    assert errors['content']['application/json']['schema'] == {'$ref': '#/components/schemas/OpenAIError'}
    assert 'OpenAIError' in document['components']['schemas']
    assert document['paths']['/v1/export']['get']['responses']['200']['content'] == {'application/x-ndjson': {}}
    ours = document['paths']['/api/v1/chat/sessions']['get']['responses']['400']
    assert ours['content']['application/json']['schema'] == {'$ref': '#/components/schemas/Error'}


async def test_a_second_table_answers_errors_in_its_own_envelope(aiohttp_client: AiohttpClient) -> None:
    app = web.Application()
    app.add_routes(endpoints((v1,), None, Metrics()))
    client = await aiohttp_client(app)
    conformance = Conformance(build_openapi(Settings(), (v1,)))
    async with client.get('/v1/conversations?metadata.name=x') as response:
        assert response.status == 400
        body = await response.json()
    assert body['error'] == {
        'message': 'metadata.name: filter on one of metadata.user_id',
        'type': 'invalid_request_error',
        'param': 'metadata.name',
        'code': 'invalid_parameter',
    }
    conformance.validate({'$ref': '#/components/schemas/OpenAIError'}, body)
    async with client.get('/v1/conversations?limit=5&metadata.user_id=u') as response:
        assert await response.json() == {'limit': 5, 'filters': {'user_id': 'u'}}


@v1.post('/v1/uploads', Operation('upload', 'A body', {200: Reply(None, 'its length')}, errors=(400, 413)))
async def upload(request: web.Request) -> web.Response:
    if request.query.get('refuse'):  # what aiohttp's request API raises for input it refuses, other than 413
        raise web.HTTPBadRequest(text='the multipart boundary is missing')
    return web.json_response({'length': len(await request.read())})


async def test_aiohttp_s_own_refusals_are_answered_in_the_table_s_envelope(aiohttp_client: AiohttpClient) -> None:
    """aiohttp's HTTPExceptions (its 413 from `request.read()`, any other) become our errors, so a table with
    its own envelope answers them in its shape; the status, code and message stay aiohttp's."""
    app = web.Application(client_max_size=10)
    app.add_routes(endpoints((v1,), None, Metrics()))
    client = await aiohttp_client(app)
    async with client.post('/v1/uploads', data=b'x' * 11) as response:
        assert response.status == 413
        body = await response.json()
    assert body['error']['code'] == 'body_too_large'
    assert body['error']['type'] == 'invalid_request_error'
    async with client.post('/v1/uploads?refuse=1', data=b'x') as response:
        assert response.status == 400
        body = await response.json()
    assert body['error'] == {
        'message': 'the multipart boundary is missing',
        'type': 'invalid_request_error',
        'param': None,
        'code': 'bad_request',
    }
