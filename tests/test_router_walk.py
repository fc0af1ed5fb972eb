"""Every route of the app passes through the endpoint wrapper (auth, tenant, the error map), proven on
the real app's router rather than on the route table it was built from; and the key check agrees with
the OpenAPI document route by route (`security: []` means open). The console's routes (`memsvc.console`) are
declared as the API's are, but left out of the document the app serves: the walk reads a document of all three
route tables."""

import re
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.compat.openai import conversations
from memsvc.console.routes import console
from memsvc.endpoint import is_endpoint
from memsvc.openapi import build_openapi
from memsvc.routes import routes
from memsvc.settings import Settings
from tests.conformance import CheckedClient, Conformance

KEY = 's3cret-key'


def unwrapped_routes(app: web.Application) -> list[str]:
    """`METHOD path` of every route whose handler skips the wrapper, and of every resource this walk
    cannot see into (a sub-application, static files): what it cannot check counts as a failure."""
    found = []
    for resource in app.router.resources():
        if not isinstance(resource, web.PlainResource | web.DynamicResource):
            found.append(f'* {resource.canonical}')
            continue
        found += [f'{route.method} {resource.canonical}' for route in resource if not is_endpoint(route.handler)]
    return found


def routes_by_openness(app: web.Application, document: dict[str, Any]) -> dict[bool, list[tuple[str, str]]]:
    """(method, a concrete path) of every route of the app but the catch-all, path parameters filled with a
    valid value, keyed by whether the document says it is open. A HEAD route is its GET's twin."""
    found: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for route in app.router.routes():
        assert route.resource is not None
        template = re.sub(r'\{(\w+):[^}]*\}', r'{\1}', route.resource.canonical)
        if template.endswith('/{path}'):  # `unmatched` (and `/v1`'s): checked on its own below
            continue
        operation = document['paths'][template]['get' if route.method == 'HEAD' else route.method.lower()]
        found[operation.get('security') == []].append((route.method, re.sub(r'\{[^}]+\}', 's', template)))
    return found


async def _bare(request: web.Request) -> web.Response:
    return web.json_response({'secret': 'served without a key'})


def test_every_route_of_the_app_is_wrapped() -> None:
    app = create_app(Settings(api_key=KEY))
    assert unwrapped_routes(app) == []
    assert len(list(app.router.routes())) >= 14, 'the walk saw the whole route table'


def test_a_route_added_without_the_wrapper_is_caught() -> None:
    app = create_app(Settings(api_key=KEY))
    app.router.add_get('/api/v1/chat/bare', _bare)
    app.router.add_static('/files', '.')
    assert unwrapped_routes(app) == ['HEAD /api/v1/chat/bare', 'GET /api/v1/chat/bare', '* /files']


async def _status_without_key(client: CheckedClient, method: str, path: str) -> int:
    if method == 'HEAD':  # not in the document: checked without it, and without a body to read
        async with client.raw.head(path, headers={'Authorization': 'Bearer wrong'}) as response:
            assert response.headers['X-Request-ID']
            return response.status
    reply = await client.request(method, path, headers={'Authorization': 'Bearer wrong'}, json={})
    if reply.status == 401:
        assert reply.error_code == 'unauthorized'
        assert reply.headers['WWW-Authenticate'] == 'Bearer'
    return reply.status


async def test_the_key_check_follows_the_document_route_by_route(aiohttp_client: AiohttpClient) -> None:
    """What the wrapper does, route by route: 401 in our JSON, with the request id, before any handler runs,
    on exactly the routes the document does not mark open; an open route answers without the key."""
    settings = Settings(api_key=KEY)
    app = create_app(settings)
    document = build_openapi(settings, (routes, conversations, console))
    client = CheckedClient(await aiohttp_client(app), Conformance(document))
    found = routes_by_openness(app, document)
    assert len(found[False]) >= 10, found
    assert len(found[True]) >= 3, found
    for method, path in found[False]:
        assert await _status_without_key(client, method, path) == 401, (method, path)
    for method, path in found[True]:
        assert await _status_without_key(client, method, path) != 401, (method, path)


async def test_a_path_no_route_serves_needs_the_key_too(aiohttp_client: AiohttpClient) -> None:
    """`unmatched` has no declaration: closed, so an unknown path tells a caller without the key nothing."""
    client: Any = await aiohttp_client(create_app(Settings(api_key=KEY)))
    for path in ('/api/v1/chat/nothing', '/nothing'):
        async with client.get(path) as response:
            assert response.status == 401, path
    async with client.get('/nothing', headers={'Authorization': f'Bearer {KEY}'}) as response:
        assert response.status == 404


async def test_the_walk_fails_the_request_check_too_for_a_bare_route(aiohttp_client: AiohttpClient) -> None:
    """The route the walk catches is one that really skips auth: the check above would fail on it."""
    app = create_app(Settings(api_key=KEY))
    app.router.add_get('/api/v1/chat/bare', _bare)
    client: Any = await aiohttp_client(app)
    async with client.get('/api/v1/chat/bare', headers={'Authorization': 'Bearer wrong'}) as response:
        assert response.status == 200
        assert 'X-Request-ID' not in response.headers


@pytest.mark.parametrize('path', ['/healthz', '/readyz', '/metrics', '/console', '/console/api'])
async def test_operations_routes_are_open_and_still_wrapped(aiohttp_client: AiohttpClient, path: str) -> None:
    client: Any = await aiohttp_client(create_app(Settings(api_key=KEY)))
    async with client.get(path) as response:
        assert response.status == 200
        assert response.headers['X-Request-ID']
