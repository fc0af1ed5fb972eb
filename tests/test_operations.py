"""Health, readiness and the OpenAPI document."""

import re

from openapi_spec_validator import validate

from memsvc.app import create_app
from memsvc.console.routes import console
from memsvc.openapi import build_openapi
from memsvc.settings import Settings
from tests.conformance import CheckedClient


async def test_healthz(client: CheckedClient) -> None:
    reply = await client.get('/healthz')
    assert reply.status == 200
    assert reply.json() == {'status': 'ok'}


async def test_readyz_while_the_store_answers(client: CheckedClient) -> None:
    reply = await client.get('/readyz')
    assert reply.status == 200
    assert reply.json() == {'status': 'ready'}


async def test_openapi_document_is_valid_openapi_31(client: CheckedClient) -> None:
    reply = await client.get('/api/v1/openapi.json')
    assert reply.status == 200
    document = reply.json()
    assert document['openapi'] == '3.1.0'
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


async def test_openapi_bounds_follow_the_settings(client: CheckedClient, settings: Settings) -> None:
    schemas = (await client.get('/api/v1/openapi.json')).json()['components']['schemas']
    assert schemas['NewMessage']['properties']['content']['maxLength'] == settings.max_content_chars
    assert schemas['NewSession']['properties']['metadata']['maxProperties'] == settings.max_metadata_keys


def test_openapi_lists_exactly_the_routes_the_app_serves() -> None:
    """Every route but the console's pages (`memsvc.console`: web pages, not API, left out of the document)."""
    app = create_app(Settings())
    paths = build_openapi(Settings())['paths']
    documented = {(method.upper(), path) for path, item in paths.items() for method in item if method != 'parameters'}
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get('formatter') or info.get('path')
        if route.method in ('HEAD', '*'):  # HEAD comes with GET; '*' is the route answering 404 and 405
            continue
        served.add((route.method, re.sub(r'\{(\w+):[^}]*\}', r'{\1}', str(template))))
    pages = {(route.method, re.sub(r'\{(\w+):[^}]*\}', r'{\1}', route.path)) for route in console.declared}
    assert pages <= served
    assert all(path.startswith('/console') for _, path in pages)
    assert served - pages == documented
