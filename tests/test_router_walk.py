"""Every route of the app passes through the endpoint wrapper (auth, tenant, the error map), proven on
the real app's router rather than on the route table it was built from."""

import re
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.endpoint import is_endpoint
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


def api_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, a concrete path) of every API route, path parameters filled with a valid value."""
    return [
        (route.method, re.sub(r'\{[^}]+\}', 's', route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith('/api/v1/')
    ]


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


async def test_every_api_route_refuses_a_request_without_the_key(aiohttp_client: AiohttpClient) -> None:
    """What the wrapper does, route by route: 401 in our JSON, with the request id, before any handler runs."""
    settings = Settings(api_key=KEY)
    app = create_app(settings)
    routes = api_routes(app)
    client = CheckedClient(await aiohttp_client(app), Conformance.for_settings(settings))
    assert len(routes) >= 10
    for method, path in routes:
        if method == 'HEAD':  # not in the document: checked without it, and without a body to read
            async with client.raw.head(path, headers={'Authorization': 'Bearer wrong'}) as response:
                assert response.status == 401, path
                assert response.headers['X-Request-ID']
            continue
        reply = await client.request(method, path, headers={'Authorization': 'Bearer wrong'}, json={})
        assert (reply.status, reply.error_code) == (401, 'unauthorized'), (method, path)
        assert reply.headers['WWW-Authenticate'] == 'Bearer'


async def test_the_walk_fails_the_request_check_too_for_a_bare_route(aiohttp_client: AiohttpClient) -> None:
    """The route the walk catches is one that really skips auth: the check above would fail on it."""
    app = create_app(Settings(api_key=KEY))
    app.router.add_get('/api/v1/chat/bare', _bare)
    client: Any = await aiohttp_client(app)
    async with client.get('/api/v1/chat/bare', headers={'Authorization': 'Bearer wrong'}) as response:
        assert response.status == 200
        assert 'X-Request-ID' not in response.headers


@pytest.mark.parametrize('path', ['/healthz', '/readyz', '/metrics'])
async def test_operations_routes_are_open_and_still_wrapped(aiohttp_client: AiohttpClient, path: str) -> None:
    client: Any = await aiohttp_client(create_app(Settings(api_key=KEY)))
    async with client.get(path) as response:
        assert response.status == 200
        assert response.headers['X-Request-ID']
