"""What every request goes through around its route handler: an id (the client's `X-Request-ID` when it
is sane, also in every log line), its tenant from the API key, its place in the metrics, and the one map
from errors to JSON error responses.

`endpoints()` wraps each handler of the route table when the app is built, rather than being an aiohttp
middleware: aiohttp runs each middleware through a partial and a second coroutine that sets the
request's current app, a cost every request would pay. A request that matches no route reaches
`unmatched`, the last route, which answers 404 or 405 in the same JSON. Every route of the app is
wrapped (tests/test_router_walk.py walks `app.router` to prove it).

Whether a route needs an API key is its declaration's `Operation.open`, the same field `openapi.py`
writes as `security: []`: the wrapper reads it once, when the app is built. A request that matches no
route needs the key (unknown paths are closed by default).
"""

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from memsvc.appkeys import TENANT
from memsvc.auth import DEFAULT_TENANT, Keyring
from memsvc.context import ContextBudgetTooSmall
from memsvc.errors import (
    BackendUnavailable,
    BodyTooLarge,
    ForkSourceChanged,
    IdempotencyKeyReused,
    IncompleteRequest,
    InternalError,
    InvalidHeader,
    InvalidInput,
    InvalidParameter,
    InvalidSessionId,
    LimitReached,
    MalformedJson,
    MemsvcError,
    MessageNotFound,
    MethodNotAllowed,
    NotSupported,
    PreconditionFailed,
    ResponseTooLarge,
    RouteNotFound,
    SessionExists,
    SessionNotFound,
    SummaryNotFound,
    ThroughIdNotStored,
    TooManyStreams,
    Unauthorized,
    UnsupportedMediaType,
)
from memsvc.lines import LineRefused, LineTooLong
from memsvc.logs import CURRENT_REQUEST_ID
from memsvc.metrics import Metrics

if TYPE_CHECKING:
    from memsvc.declare import Operation, RouteTable

log = logging.getLogger('memsvc')

STATUS_FOR: dict[type[MemsvcError], int] = {
    InvalidParameter: 400,
    InvalidHeader: 400,
    InvalidSessionId: 400,
    MalformedJson: 400,
    LineRefused: 400,
    IncompleteRequest: 400,
    ResponseTooLarge: 400,
    Unauthorized: 401,
    SessionNotFound: 404,
    SummaryNotFound: 404,
    MessageNotFound: 404,
    RouteNotFound: 404,
    MethodNotAllowed: 405,
    SessionExists: 409,
    ForkSourceChanged: 409,
    LimitReached: 409,
    PreconditionFailed: 412,
    BodyTooLarge: 413,
    LineTooLong: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    IdempotencyKeyReused: 422,
    ThroughIdNotStored: 422,
    ContextBudgetTooSmall: 422,
    InternalError: 500,
    NotSupported: 501,
    BackendUnavailable: 503,
    TooManyStreams: 503,
}
"""The one map from an error class to its status, looked up along the MRO: a subclass answers as its
nearest listed base (`InvalidCursor` as `InvalidParameter`, `StoreTimeout` as `BackendUnavailable`).
It lives here rather than on the classes so that `errors.py` stays free of HTTP, as the manager and
the stores that raise those errors are."""
RETRY_AFTER_SECONDS = '1'

Envelope = Callable[[MemsvcError], web.Response]
"""How a group of routes answers an error: ours is `error_response_for`; part 2's `/v1` has its own shape."""

_HOT_PATHS = ('/messages', '/context', '/items')
UNMATCHED = '(unmatched)'
"""The route label, in the metrics, of requests that match no route."""
_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')
WRAPPED = '__memsvc_endpoint__'
"""The attribute `_wrap` sets on each wrapper it returns, so a test can tell a wrapped handler from a bare one."""
CATCH_ALL = '__memsvc_unmatched__'
"""The attribute of the wrappers of `unmatched`, so that it can tell the catch-all routes from the others."""


class RefusedByAiohttp(MemsvcError):
    """An error aiohttp raised from its own request API (an `HTTPException` at 400 or above), answered with
    aiohttp's status and its reason as the code. aiohttp's 413 becomes `BodyTooLarge` instead."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = reason.lower().replace(' ', '_').replace('-', '_')


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Our JSON error body, `{"error": {"code", "message"}}`, as a response."""
    body = orjson.dumps({'error': {'code': code, 'message': message}})
    return web.Response(status=status, body=body, content_type='application/json', headers=headers)


def status_for(exc: MemsvcError) -> int:
    if isinstance(exc, RefusedByAiohttp):  # the one error whose status is aiohttp's, not its class's
        return exc.status
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 500


def headers_for(exc: MemsvcError) -> dict[str, str] | None:
    """The headers an error answer carries besides its body (what to retry, how, or when)."""
    if isinstance(exc, BackendUnavailable | TooManyStreams):
        return {'Retry-After': RETRY_AFTER_SECONDS}
    if isinstance(exc, MethodNotAllowed):
        return {'Allow': ','.join(exc.allowed)}
    if isinstance(exc, Unauthorized):
        return {'WWW-Authenticate': 'Bearer'}
    return None


def error_response_for(exc: MemsvcError) -> web.Response:
    return error_response(status_for(exc), exc.code, exc.message, headers_for(exc))


def endpoints(tables: 'Sequence[RouteTable]', keyring: Keyring | None, metrics: Metrics) -> list[web.RouteDef]:
    """The routes of `tables` with their handlers wrapped, then `unmatched` under each table's prefix (answering
    in that table's envelope) and `unmatched` for every other path last, for `app.add_routes`. Errors are
    answered in each table's envelope (ours unless it names another).

    The message and context routes (and `/v1`'s items) come first. aiohttp tries the resources under one path prefix
    (here every `/api/v1/chat/sessions...`) in the order they were added, matching each one's regex, and a gateway
    reads and appends messages, or reads its context window, on every turn: first, those requests skip the other
    resources' regexes.
    No two of our paths match the same URL, so the order changes nothing else.
    """
    wrapped = []
    for routes in tables:
        envelope = routes.envelope or error_response_for
        for route in sorted(routes.declared, key=lambda route: not route.path.endswith(_HOT_PATHS)):
            label = web.DynamicResource(route.path).canonical if '{' in route.path else route.path
            handler = _wrap(route.handler, label, route.operation, keyring, metrics, envelope)
            wrapped.append(web.RouteDef(route.method, route.path, handler, {}))
    for routes in tables:
        if routes.prefix:
            handler = _wrap(unmatched, UNMATCHED, None, keyring, metrics, routes.envelope or error_response_for)
            wrapped.append(web.RouteDef('*', routes.prefix + '/{path:.*}', handler, {}))
    handler = _wrap(unmatched, UNMATCHED, None, keyring, metrics, error_response_for)
    wrapped.append(web.RouteDef('*', '/{path:.*}', handler, {}))
    return wrapped


def _wrap(
    handler: Handler,
    route: str,
    operation: 'Operation | None',
    keyring: Keyring | None,
    metrics: Metrics,
    envelope: Envelope,
) -> Handler:
    """`operation` None is `unmatched`, which needs the key. An open route gets no keyring: every request
    on it is the default tenant, decided here rather than per request."""
    if operation is not None and operation.open:
        keyring = None

    async def endpoint(request: web.Request) -> web.StreamResponse:
        given = request.headers.get('X-Request-ID')
        request_id = given if given is not None and _REQUEST_ID.fullmatch(given) else _new_request_id()
        CURRENT_REQUEST_ID.set(request_id)
        start = time.perf_counter()
        metrics.in_flight += 1
        try:
            request[TENANT] = DEFAULT_TENANT if keyring is None else _tenant(request, keyring)
            response = await handler(request)
        except Exception as exc:
            response = _error_response(request, exc, request_id, envelope)
        finally:
            metrics.in_flight -= 1
        response.headers['X-Request-ID'] = request_id
        metrics.observe_request(route, request.method, response.status, time.perf_counter() - start)
        return response

    setattr(endpoint, WRAPPED, True)
    if operation is None:
        setattr(endpoint, CATCH_ALL, True)
    return endpoint


def is_endpoint(handler: object) -> bool:
    """Whether `handler` is one that `endpoints()` wrapped: it runs auth, the tenant and the error map."""
    return getattr(handler, WRAPPED, False) is True


async def unmatched(request: web.Request) -> web.StreamResponse:
    """404, or 405 with `Allow` when another route serves this path with other methods."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if not any(getattr(route.handler, CATCH_ALL, False) for route in resource):
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise MethodNotAllowed(request.method, request.path, sorted(allowed))
    raise RouteNotFound(request.path)


def _new_request_id() -> str:
    """32 random hex digits, like a uuid4's, from `random` rather than the OS: ids need to be unique, not
    unpredictable, and this avoids `uuid.uuid4()`'s system call and object on every request."""
    return random.getrandbits(128).to_bytes(16).hex()


def _error_response(request: web.Request, exc: Exception, request_id: str, envelope: Envelope) -> web.StreamResponse:
    """Every exception a handler raises becomes one of our errors here, answered in the route's envelope."""
    if not isinstance(exc, MemsvcError):
        if isinstance(exc, web.HTTPException):  # aiohttp's own, raised from inside its request API
            if exc.status < 400:
                raise exc
            message = exc.text if exc.text and not exc.text.startswith(f'{exc.status}:') else exc.reason
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                exc = BodyTooLarge(message)
            else:
                exc = RefusedByAiohttp(exc.status, exc.reason, message)
        elif isinstance(exc, ConnectionResetError):  # the client went away mid-request; aiohttp drops this answer
            log.info('the client closed the connection before the request was complete')
            exc = IncompleteRequest()
        else:
            log.error('unhandled error in %s %s', request.method, request.path, exc_info=exc)
            exc = InternalError(request_id)
    elif isinstance(exc, BackendUnavailable):
        log.warning('backend unavailable: %s', exc.message)
    return envelope(exc)


def _tenant(request: web.Request, keyring: Keyring) -> str:
    """With API keys configured, every route that is not open needs `Authorization: Bearer <key>`, and the
    key names the tenant whose sessions the request sees. Without keys, everything is the default tenant."""
    tenant = keyring.tenant_for(request.headers.get('Authorization', '').encode('utf-8', 'surrogateescape'))
    if tenant is None:
        raise Unauthorized()
    return tenant
