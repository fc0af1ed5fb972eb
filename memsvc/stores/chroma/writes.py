"""How the Chroma store runs its writes: one writer per session in this process, and every write to its end.

Chroma has no transactions (`store.py`), so a session's writes hold an asyncio lock of its own, per tenant and
session; and a write, once started, runs to its end even if its request is cancelled (a client that disconnects, a
deadline), so that the next write of the session never starts while a call of this one is still writing to Chroma.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec('P')
T = TypeVar('T')


class Writes:
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._running: set[asyncio.Future[Any]] = set()  # writes that run on after their caller was cancelled

    async def locked(
        self,
        tenant: str,
        session_id: str,
        write: Callable[Concatenate[str, str, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`write(tenant, session_id, ...)` holding the session's lock, to completion even if the caller is
        cancelled."""
        work = functools.partial(write, tenant, session_id, *args, **kwargs)

        async def locked() -> T:
            async with self.held(tenant, session_id):
                return await work()

        return await self.shielded(locked())

    @contextlib.asynccontextmanager
    async def held(self, tenant: str, session_id: str) -> AsyncIterator[None]:
        """The session's lock, held for the body (an import holds it across many steps)."""
        key = (tenant, session_id)
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            held, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (held, users - 1)

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await `work` as a task that a cancellation of the caller does not stop."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled meanwhile has answered already
