"""Operations: health, readiness, metrics, the OpenAPI document."""

import asyncio

from aiohttp import web

from memsvc.appkeys import MANAGER, METRICS, OPENAPI_JSON
from memsvc.declare import Operation, Reply
from memsvc.errors import BackendUnavailable
from memsvc.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from memsvc.models import Status
from memsvc.routes.common import READY_TIMEOUT_SECONDS, json_response, routes


@routes.get(
    '/healthz', Operation('healthz', 'The process is alive', {200: Reply(Status, 'alive')}, store=False, open=True)
)
async def healthz(request: web.Request) -> web.Response:
    return json_response({'status': 'ok'})


@routes.get(
    '/readyz',
    Operation('readyz', 'The backend answers', {200: Reply(Status, 'ready')}, errors=(503,), store=False, open=True),
)
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app[MANAGER].ping()
    except TimeoutError:
        raise BackendUnavailable(f'the store did not answer within {READY_TIMEOUT_SECONDS} s') from None
    return json_response({'status': 'ready'})


@routes.get(
    '/metrics',
    Operation(
        'metrics',
        'Prometheus metrics (text format), for every worker process',
        {200: Reply(None, 'the metrics', media_type='text/plain')},
        store=False,
        open=True,
    ),
)
async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers['Content-Type'] = METRICS_CONTENT_TYPE
    return response


@routes.get(
    '/api/v1/openapi.json',
    Operation('openapi', 'This document', {200: Reply(None, 'the OpenAPI document')}, errors=(401,), store=False),
)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type='application/json')
