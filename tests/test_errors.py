"""Every error class: JSON body, application/json, the right status, no stack trace, X-Request-ID."""

import asyncio
import importlib
import io
import logging
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

import memsvc
from memsvc.app import create_app
from memsvc.endpoint import STATUS_FOR, RefusedByAiohttp, status_for
from memsvc.errors import InternalError, MemsvcError
from memsvc.logs import configure_logging
from memsvc.manager import AsyncMemoryManager
from memsvc.settings import Settings
from tests.conformance import CheckedClient, Conformance
from tests.helpers import API

JSON = {'Content-Type': 'application/json'}
SESSION_ROUTES = [
    ('GET', '/sessions/{}'),
    ('PATCH', '/sessions/{}'),
    ('DELETE', '/sessions/{}'),
    ('GET', '/sessions/{}/messages'),
    ('POST', '/sessions/{}/messages'),
    ('DELETE', '/sessions/{}/messages'),
    ('GET', '/sessions/{}/search?q=x'),
]
BAD_IDS = ['a' * 129, 'has space', 'semi;colon', 'star*', '%2e%2e%2fetc', 'uni\u00e9', 'a%2Fb', '%7B%7D', 'x%00y']


async def test_invalid_session_id_is_400_in_every_route(client: CheckedClient) -> None:
    # One test per store for the 63 pairs: the check runs before the store, and an app per pair would make
    # this file a fifth of the suite's time.
    answers = {}
    for method, route in SESSION_ROUTES:
        for bad_id in BAD_IDS:
            reply = await client.request(method, API + route.format(bad_id), json={'role': 'user', 'content': 'x'})
            answers[method, route, bad_id] = (reply.status, reply.error_code)
    assert {pair: answer for pair, answer in answers.items() if answer != (400, 'invalid_session_id')} == {}


@pytest.mark.parametrize('bad_id', ['', 'a' * 129, 'white space', 'slash/y', '{tag}'])
async def test_invalid_session_id_in_bodies_and_queries_is_rejected(client: CheckedClient, bad_id: str) -> None:
    created = await client.post(f'{API}/sessions', json={'id': bad_id})
    assert created.status == 422
    assert created.json()['error']['message'].startswith('id:')
    searched = await client.get(f'{API}/search', params={'q': 'x', 'session_id': bad_id})
    assert searched.status == 400


async def test_longest_valid_session_id_is_accepted(client: CheckedClient) -> None:
    session_id = 'A-z_0.9:' * 16
    assert len(session_id) == 128
    assert (
        await client.post(f'{API}/sessions/{session_id}/messages', json={'role': 'user', 'content': 'x'})
    ).status == 201


@pytest.mark.parametrize(
    ('method', 'path'),
    [('POST', '/sessions'), ('PATCH', '/sessions/s'), ('POST', '/sessions/s/messages')],
)
async def test_malformed_json_is_400(client: CheckedClient, method: str, path: str) -> None:
    await client.post(f'{API}/sessions', json={'id': 's'})
    answers = {}
    for raw in [b'{', b'{"role": "user",}', b'nope', b'{"content": "\\ud800"}', b'\xff\xfe']:
        reply = await client.request(method, API + path, data=raw, headers={'Content-Type': 'application/json'})
        answers[raw] = (reply.status, reply.error_code)
    assert {raw: answer for raw, answer in answers.items() if answer != (400, 'malformed_json')} == {}


@pytest.mark.parametrize(
    ('method', 'path', 'body'),
    [
        ('POST', '/sessions/s/messages', b'{"role":"user","content":"x"}'),
        ('POST', '/sessions', b'{"id":"s"}'),
        ('PATCH', '/sessions/s', b'{"metadata":{"a":1}}'),
    ],
)
async def test_non_json_body_is_415(client: CheckedClient, method: str, path: str, body: bytes) -> None:
    for content_type in ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data']:
        reply = await client.request(method, API + path, data=body, headers={'Content-Type': content_type})
        assert (reply.status, reply.error_code) == (415, 'unsupported_media_type'), content_type
        assert (await client.get(f'{API}/sessions/s')).status == 404


@pytest.mark.parametrize(
    ('raw', 'field'),
    [
        (b'{"role":"user","content":"x","metadata":{"n":NaN}}', 'metadata'),
        (b'{"role":"user","content":"x","metadata":{"deep":{"n":[1,-Infinity]}}}', 'metadata'),
        (b'{"role":"user","content":"x","metadata":{"n":1e400}}', 'metadata'),
        (b'{"role":"user","content":"x","metadata":{"n":123456789012345678901234567890}}', 'metadata'),
        (b'{"role":"user","content":"x","tool_calls":[{"a":Infinity}]}', 'tool_calls[0]'),
        (b'[{"role":"user","content":"x"},{"role":"user","content":"x","metadata":{"n":NaN}}]', '[1].metadata'),
    ],
)
async def test_numbers_json_cannot_carry_are_422_never_stored_as_null(
    client: CheckedClient, raw: bytes, field: str
) -> None:
    reply = await client.post(f'{API}/sessions/n/messages', data=raw, headers=JSON)
    assert reply.status == 422
    assert reply.json()['error']['message'].startswith(field)
    assert (await client.get(f'{API}/sessions/n')).status == 404


async def test_metadata_numbers_json_cannot_carry_are_422_on_create_and_patch(client: CheckedClient) -> None:
    created = await client.post(f'{API}/sessions', data=b'{"id":"m","metadata":{"a":1e999}}', headers=JSON)
    assert created.status == 422
    await client.post(f'{API}/sessions', json={'id': 'm', 'metadata': {'a': 1}})
    patched = await client.patch(f'{API}/sessions/m', data=b'{"metadata":{"a":NaN}}', headers=JSON)
    assert patched.status == 422
    assert (await client.get(f'{API}/sessions/m')).json()['metadata'] == {'a': 1}


async def test_big_but_storable_numbers_round_trip(client: CheckedClient) -> None:
    metadata = {'max': 2**64 - 1, 'min': -(2**63), 'tiny': 5e-324, 'big': 1.7976931348623157e308}
    reply = await client.post(f'{API}/sessions/n/messages', json={'role': 'user', 'content': 'x', 'metadata': metadata})
    assert reply.status == 201
    assert reply.json()['metadata'] == metadata


async def test_long_non_ascii_search_text_gets_a_json_answer(client: CheckedClient) -> None:
    reply = await client.get(f'{API}/search', params={'q': '日' * 2000})
    assert reply.status in (200, 501)
    assert reply.headers['Content-Type'].startswith('application/json')


async def test_json_with_charset_and_vendor_json_types_are_accepted(client: CheckedClient) -> None:
    for content_type in ['application/json; charset=utf-8', 'application/merge-patch+json']:
        reply = await client.post(
            f'{API}/sessions/s/messages', data=b'{"role":"user","content":"x"}', headers={'Content-Type': content_type}
        )
        assert reply.status == 201, content_type


async def test_body_over_the_limit_is_413_and_stores_nothing(client: CheckedClient) -> None:
    huge = b'{"role":"user","content":"' + b'x' * (1024 * 1024) + b'"}'
    reply = await client.post(
        f'{API}/sessions/big/messages', data=io.BytesIO(huge), headers={'Content-Type': 'application/json'}
    )
    assert reply.status == 413
    assert reply.error_code == 'body_too_large'
    assert (await client.get(f'{API}/sessions/big')).status == 404


async def test_max_body_bytes_is_configurable(aiohttp_client: AiohttpClient) -> None:
    settings = Settings(max_body_bytes=2048)
    client = CheckedClient(await aiohttp_client(create_app(settings)), Conformance.for_settings(settings))
    reply = await client.post(f'{API}/sessions/s/messages', json={'role': 'user', 'content': 'x' * 3000})
    assert reply.status == 413
    assert (await client.post(f'{API}/sessions/s/messages', json={'role': 'user', 'content': 'x' * 1000})).status == 201


async def test_unknown_route_is_json_404(client: CheckedClient) -> None:
    reply = await client.get('/api/v1/nothing/here')
    assert reply.status == 404
    assert reply.error_code == 'not_found'
    assert '/api/v1/nothing/here' in reply.json()['error']['message']


async def test_wrong_method_is_json_405_with_allow(client: CheckedClient) -> None:
    reply = await client.request('PUT', f'{API}/sessions/s')
    assert reply.status == 405
    assert reply.error_code == 'method_not_allowed'
    assert set(reply.headers['Allow'].split(',')) >= {'GET', 'PATCH', 'DELETE'}


async def test_request_id_is_echoed_or_made_up(client: CheckedClient) -> None:
    given = await client.get('/healthz', headers={'X-Request-ID': 'gateway-abc.123'})
    assert given.headers['X-Request-ID'] == 'gateway-abc.123'
    made = await client.get('/healthz')
    other = await client.get('/healthz')
    assert made.headers['X-Request-ID'] != other.headers['X-Request-ID']
    unsafe = await client.get('/healthz', headers={'X-Request-ID': 'bad id\twith tab'})
    assert unsafe.headers['X-Request-ID'] != 'bad id\twith tab'
    failed = await client.get(f'{API}/sessions/nope', headers={'X-Request-ID': 'trace-1'})
    assert failed.status == 404
    assert failed.headers['X-Request-ID'] == 'trace-1'


@pytest.fixture
def json_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """memsvc's own log configuration (MEMSVC_LOG_FORMAT=json), set up at the first call of the reader it
    yields (so that it writes to the test's stderr); the reader returns the JSON lines logged since."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def read() -> list[dict[str, Any]]:
        if root.handlers == saved[0]:
            configure_logging('INFO', 'json')
        return [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith('{')]

    try:
        yield read
    finally:
        root.handlers, root.level = saved[0], saved[1]


async def test_unexpected_error_is_500_without_stack_trace_and_logged_with_request_id(
    aiohttp_client: AiohttpClient, json_logs: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    json_logs()

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError('secret internal detail /srv/memsvc/stores/x.py line 42')

    monkeypatch.setattr(AsyncMemoryManager, 'get_session', broken)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings()))
    async with client.get('/api/v1/chat/sessions/s', headers={'X-Request-ID': 'boom-1'}) as response:
        assert response.status == 500
        assert response.content_type == 'application/json'
        assert response.headers['X-Request-ID'] == 'boom-1'
        body = await response.read()
    error = orjson.loads(body)['error']
    assert error['code'] == 'internal_error'
    assert 'boom-1' in error['message']
    assert b'secret' not in body
    assert b'Traceback' not in body
    async with client.get('/healthz') as response:
        assert response.status == 200, 'the process keeps serving'
    [logged] = [line for line in json_logs() if line['level'] == 'ERROR']
    assert logged['request_id'] == 'boom-1'
    assert logged['logger'] == 'memsvc'
    assert 'RuntimeError: secret internal detail' in logged['exception'], 'the details stay in the log'


async def test_every_log_line_of_a_request_carries_its_id(
    client: CheckedClient, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    json_logs()
    logging.getLogger('memsvc.test').info('outside any request')
    await client.get(f'{API}/sessions', params={'limit': '0'}, headers={'X-Request-ID': 'req-7'})
    await client.get('/healthz', headers={'X-Request-ID': 'req-8'})
    lines = json_logs()
    assert lines[0]['request_id'] == '-'
    assert lines[0]['message'] == 'outside any request'
    access = [line for line in lines if line['logger'] == 'aiohttp.access']
    assert [line['request_id'] for line in access] == ['req-7', 'req-8'], 'the access log line of each request'


# --- API key ---------------------------------------------------------------------------------


@pytest.fixture
async def keyed(aiohttp_client: AiohttpClient) -> CheckedClient:
    settings = Settings(api_key='s3cret-key')
    return CheckedClient(await aiohttp_client(create_app(settings)), Conformance.for_settings(settings))


@pytest.mark.parametrize(
    'auth', [None, 'Bearer wrong', 'Bearer s3cret-ke', 'Bearer s3cret-key2', 's3cret-key', 'Basic czNjcmV0LWtleQ==']
)
async def test_api_key_required_on_every_api_route(keyed: CheckedClient, auth: str | None) -> None:
    headers = {} if auth is None else {'Authorization': auth}
    for method, path in [
        ('GET', f'{API}/sessions'),
        ('POST', f'{API}/sessions'),
        ('GET', f'{API}/sessions/s'),
        ('POST', f'{API}/sessions/s/messages'),
        ('GET', f'{API}/search?q=x'),
        ('GET', '/api/v1/openapi.json'),
    ]:
        reply = await keyed.request(method, path, headers=headers, json={'role': 'user', 'content': 'x'})
        assert reply.status == 401, (method, path)
        assert reply.error_code == 'unauthorized'
        assert reply.headers['WWW-Authenticate'] == 'Bearer'
    good = {'Authorization': 'Bearer s3cret-key'}
    assert (await keyed.get(f'{API}/sessions/s', headers=good)).status == 404, 'nothing was written without the key'


async def test_api_key_with_bytes_outside_utf8_is_401(keyed: CheckedClient) -> None:
    server = keyed.raw.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b'GET /api/v1/chat/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n'
    )
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b'HTTP/1.1 401'), reply[:200]
    assert b'"unauthorized"' in reply


async def test_api_key_accepted_and_health_routes_stay_open(keyed: CheckedClient) -> None:
    good = {'Authorization': 'Bearer s3cret-key'}
    reply = await keyed.post(f'{API}/sessions/s/messages', headers=good, json={'role': 'user', 'content': 'x'})
    assert reply.status == 201
    assert (await keyed.get('/healthz')).status == 200
    assert (await keyed.get('/readyz')).status == 200
    assert (await keyed.get('/api/v1/openapi.json', headers=good)).json()['security'] == [{'apiKey': []}]


# --- the status map ----------------------------------------------------------------------------


def _every_error_class() -> list[type[MemsvcError]]:
    """Every subclass of MemsvcError, at any depth, after importing every module of the package (an error
    defined outside errors.py is found too)."""
    for module in pkgutil.walk_packages(memsvc.__path__, 'memsvc.'):
        importlib.import_module(module.name)
    found: list[type[MemsvcError]] = []
    todo = [MemsvcError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_every_error_class_maps_to_a_status_other_than_500() -> None:
    """`status_for` falls back to 500: an error class nobody mapped would answer as a server bug."""
    classes = _every_error_class()
    assert len(classes) >= 20, classes
    unmapped = []
    for cls in classes:
        if cls is InternalError or cls is RefusedByAiohttp:
            continue
        status = next((STATUS_FOR[base] for base in cls.__mro__ if base in STATUS_FOR), 500)
        if status == 500:
            unmapped.append(f'{cls.__module__}.{cls.__qualname__}')
    assert unmapped == [], f'add these to STATUS_FOR in memsvc/endpoint.py: {unmapped}'
    assert STATUS_FOR[InternalError] == 500
    refused = web.HTTPBadRequest()
    assert status_for(RefusedByAiohttp(refused.status, refused.reason, 'x')) == 400, 'aiohttp gave it'
