"""The application factory."""

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import orjson
from aiohttp import web

from memsvc.appkeys import CONSOLE_FILES, HUB, MANAGER, METRICS, OPENAPI_JSON, SETTINGS, STREAMED_BODIES
from memsvc.auth import Keyring
from memsvc.compat.openai import conversations
from memsvc.console.files import ConsoleFiles
from memsvc.console.routes import console
from memsvc.declare import LinesBody
from memsvc.endpoint import endpoints
from memsvc.events import open_hub
from memsvc.manager import AsyncMemoryManager
from memsvc.metrics import FLUSH_SECONDS, Metrics
from memsvc.openapi import build_openapi
from memsvc.routes import routes
from memsvc.settings import Settings
from memsvc.stores import open_store
from memsvc.stores.instrumented import InstrumentedStore
from memsvc.tokens import DEFAULT_ENCODING, shared_counter

T = TypeVar('T')


def _in_daemon_thread(work: Callable[[], T]) -> 'asyncio.Future[T]':
    """`work()` in a daemon thread of its own, as a future of the running loop. Not the loop's default executor:
    its threads are joined when the interpreter exits, so a start that fails (Redis refuses or is LOADING) would
    print its one line and then wait for the token counter it no longer needs (seconds on a busy machine)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, work())
        except BaseException as exc:  # handed to the awaiting start-up
            outcome = functools.partial(future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name='memsvc-token-counter', daemon=True).start()
    return future


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store at start (failing there when the backend is down) and close it at the end. The token
    counter loads off the event loop, meanwhile, in a thread that does not hold up the exit of a failed start."""
    settings = app[SETTINGS]
    counter = _in_daemon_thread(lambda: shared_counter(DEFAULT_ENCODING))
    async with open_store(settings) as store, open_hub(settings, store) as hub:
        instrumented = InstrumentedStore(store, app[METRICS], settings.store_deadline())
        app[HUB] = hub
        app[METRICS].open_streams = lambda: hub.open_streams
        app[MANAGER] = AsyncMemoryManager(instrumented, settings, await counter, hub)
        yield


async def _end_waits(app: web.Application) -> None:
    """On SIGTERM, before aiohttp waits for the requests in flight: event streams end and long-polls answer now,
    so the drain does not wait for them."""
    if HUB in app:
        app[HUB].shutdown()


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Add the metrics tallied in this process to the shared ones once a second, and once more at the end."""
    metrics = app[METRICS]

    async def flush_every_second() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            metrics.flush()

    task = asyncio.create_task(flush_every_second())
    yield
    task.cancel()
    metrics.flush()


MAX_LINE_BYTES = 32 * 1024
"""Longest request line and header: a search text of 2,000 characters percent-encoded fits (aiohttp's
default of 8,190 bytes would answer such requests with a plain-text 400 before any of our code runs)."""


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={'max_line_size': MAX_LINE_BYTES, 'max_field_size': MAX_LINE_BYTES},
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[OPENAPI_JSON] = orjson.dumps(build_openapi(settings))
    app[STREAMED_BODIES] = frozenset(
        route.path for route in routes.declared if any(isinstance(body, LinesBody) for body in route.operation.body)
    )
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.on_shutdown.append(_end_waits)
    tables = [routes, conversations]
    if settings.console:  # MEMSVC_CONSOLE=false: no /console routes at all
        app[CONSOLE_FILES] = ConsoleFiles.load()
        tables.append(console)
    app.add_routes(endpoints(tables, Keyring.from_settings(settings), metrics))
    return app
