"""`MemsvcClient`: the blocking client, for scripts and notebooks. It is `AsyncMemsvcClient` run on an event loop of
its own in a background thread: each method hands the coroutine of its async twin to that loop and waits for it,
so both clients behave the same (retries, keys, errors, types) and there is one implementation. It can be
called from any thread, also from inside a running event loop (a notebook's).
"""

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from memsvc.client.aio import AsyncMemsvcClient

P = ParamSpec('P')
T = TypeVar('T')


def _blocking(
    method: Callable[Concatenate[AsyncMemsvcClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate['MemsvcClient', P], T]:
    @functools.wraps(method)
    def call(self: 'MemsvcClient', /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._client, *args, **kwargs))

    return call


def _iterating(
    method: Callable[Concatenate[AsyncMemsvcClient, P], AsyncIterator[T]],
) -> Callable[Concatenate['MemsvcClient', P], Iterator[T]]:
    @functools.wraps(method)
    def call(self: 'MemsvcClient', /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(method(self._client, *args, **kwargs))

    return call


class MemsvcClient:
    """The blocking twin of `AsyncMemsvcClient`: the same methods, with the same arguments, answering their results
    instead of coroutines (and iterators instead of async iterators). Use it as `with MemsvcClient(url) as client:`,
    or call `close()` when done (it stops its thread)."""

    def __init__(self, base_url: str, api_key: str | None = None, **options: Any) -> None:
        self._client = AsyncMemsvcClient(base_url, api_key, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name='memsvc-client', daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return self._client.base_url

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> 'Future[T]':
        if not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError('this MemsvcClient is closed')
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result()

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(iterator)
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            aclose = getattr(iterator, 'aclose', None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]  # an item, when there is one
        finally:
            if self._thread.is_alive():
                self._run(close())

    def call(self, work: Callable[[AsyncMemsvcClient], Coroutine[Any, Any, T]]) -> T:
        """Run `work(async_client)` on this client's loop and wait for its result: several calls in one step."""
        return self._run(work(self._client))

    async def run(self, work: Callable[[AsyncMemsvcClient], Coroutine[Any, Any, T]]) -> T:
        """Await `work(async_client)` from any event loop: it runs on this client's own loop, so one client serves
        coroutines of every loop (an adapter's async methods, called from whatever loop its framework runs)."""
        return await asyncio.wrap_future(self._submit(work(self._client)))

    def close(self) -> None:
        """Close the connections and stop the thread; the client cannot be used after this."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    create_session = _blocking(AsyncMemsvcClient.create_session)
    get_session = _blocking(AsyncMemsvcClient.get_session)
    get_versioned = _blocking(AsyncMemsvcClient.get_versioned)
    list_sessions = _blocking(AsyncMemsvcClient.list_sessions)
    sessions = _iterating(AsyncMemsvcClient.sessions)
    update_metadata = _blocking(AsyncMemsvcClient.update_metadata)
    modify = _blocking(AsyncMemsvcClient.modify)
    delete_session = _blocking(AsyncMemsvcClient.delete_session)
    erase = _blocking(AsyncMemsvcClient.erase)
    fork = _blocking(AsyncMemsvcClient.fork)
    append = _blocking(AsyncMemsvcClient.append)
    append_many = _blocking(AsyncMemsvcClient.append_many)
    get_messages = _blocking(AsyncMemsvcClient.get_messages)
    messages = _iterating(AsyncMemsvcClient.messages)
    get_message = _blocking(AsyncMemsvcClient.get_message)
    delete_message = _blocking(AsyncMemsvcClient.delete_message)
    pop = _blocking(AsyncMemsvcClient.pop)
    clear_messages = _blocking(AsyncMemsvcClient.clear_messages)
    truncate = _blocking(AsyncMemsvcClient.truncate)
    events = _iterating(AsyncMemsvcClient.events)
    context = _blocking(AsyncMemsvcClient.context)
    set_summary = _blocking(AsyncMemsvcClient.set_summary)
    get_summary = _blocking(AsyncMemsvcClient.get_summary)
    delete_summary = _blocking(AsyncMemsvcClient.delete_summary)
    search = _blocking(AsyncMemsvcClient.search)
    export_lines = _iterating(AsyncMemsvcClient.export_lines)
    export = _iterating(AsyncMemsvcClient.export)
    import_lines = _blocking(AsyncMemsvcClient.import_lines)
    ready = _blocking(AsyncMemsvcClient.ready)
    openapi = _blocking(AsyncMemsvcClient.openapi)
