"""The application factory."""

from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from memsvc.appkeys import KEYRING, MANAGER, METRICS, OPENAPI_JSON, SETTINGS
from memsvc.auth import Keyring
from memsvc.manager import AsyncMemoryManager
from memsvc.metrics import Metrics
from memsvc.middlewares import request_context
from memsvc.openapi import build_openapi
from memsvc.routes import routes
from memsvc.settings import Settings
from memsvc.stores import open_store
from memsvc.stores.instrumented import InstrumentedStore


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store at start (failing there when the backend is down) and close it at the end."""
    settings = app[SETTINGS]
    async with open_store(settings) as store:
        instrumented = InstrumentedStore(store, app[METRICS], settings.store_deadline())
        app[MANAGER] = AsyncMemoryManager(instrumented, settings)
        yield


MAX_LINE_BYTES = 32 * 1024
"""Longest request line and header: a search text of 2,000 characters percent-encoded fits (aiohttp's
default of 8,190 bytes would answer such requests with a plain-text 400 before any middleware runs)."""


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context],
        client_max_size=settings.max_body_bytes,
        handler_args={'max_line_size': MAX_LINE_BYTES, 'max_field_size': MAX_LINE_BYTES},
    )
    app[SETTINGS] = settings
    app[KEYRING] = Keyring.from_settings(settings)
    app[METRICS] = Metrics()
    app[OPENAPI_JSON] = orjson.dumps(build_openapi(settings))
    app.cleanup_ctx.append(_store_ctx)
    app.add_routes(routes)
    return app
