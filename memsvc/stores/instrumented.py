"""Any store, with a deadline on every operation and each operation's latency and failures measured.

The deadline (`MEMSVC_STORE_TIMEOUT_SECONDS`) bounds what the client libraries' own timeouts do not:
a Chroma call stuck in its executor, or a Redis command behind a busy pool. Past it, the request
answers 503; the operation may still complete (a Chroma thread cannot be stopped), which is why a
503 means "outcome unknown, retry with the same Idempotency-Key", never "nothing happened".
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar, cast

from memsvc.errors import BackendUnavailable, MemsvcError, StoreTimeout
from memsvc.metrics import Metrics
from memsvc.models import SearchHit, SessionRecord, StoredSession
from memsvc.stores.base import (
    Appended,
    CountedPage,
    ExportRead,
    Fork,
    Idempotency,
    ImportWriter,
    ListCursor,
    MessageRange,
    SessionImage,
    Store,
    Summarized,
    Truncated,
    WindowRead,
)
from memsvc.stores.gaps import Gaps
from memsvc.stores.index import Where

T = TypeVar('T')


class Deadlines:
    """One deadline, `seconds` long, for any number of concurrent operations, with one timer between them.

    `asyncio.timeout(seconds)` arms and cancels a timer per operation (on uvloop a libuv timer each time),
    which costs about as much as a whole batched Redis call. Here each operation enters an
    `asyncio.timeout(None)`, which arms nothing, and is listed with its expiry; one timer, running only
    while operations are listed, wakes every `resolution` seconds and reschedules the expired ones' timeouts
    to now, so asyncio cancels them exactly as an armed timeout would (TimeoutError in the operation). An
    operation may so run up to `resolution` past its deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.resolution = min(seconds / 10, 0.05)
        self._listed: dict[asyncio.Timeout, float] = {}  # in order of expiry: every operation gets `seconds`
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, timeout: asyncio.Timeout) -> None:
        loop = asyncio.get_running_loop()
        self._listed[timeout] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(self.resolution, self._expire)

    def forget(self, timeout: asyncio.Timeout) -> None:
        self._listed.pop(timeout, None)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._listed:
            timeout, expiry = next(iter(self._listed.items()))
            if expiry > now:
                break
            del self._listed[timeout]
            timeout.reschedule(now)
        self._timer = loop.call_later(self.resolution, self._expire) if self._listed else None


class InstrumentedStore:
    """`timeout` None: no deadline, for a store that never waits (the in-memory one, whose operations
    finish without suspending, so a deadline could never fire)."""

    self_timed: frozenset[str] = frozenset()  # the outermost store: nothing puts a deadline around this one

    def __init__(self, store: Store, metrics: Metrics, timeout: float | None) -> None:
        self.inner = store
        self._metrics = metrics
        self._timeout = timeout
        self._deadlines = Deadlines(timeout) if timeout is not None else None
        self._self_timed = store.self_timed

    async def _call(self, operation: str, call: Awaitable[T], *, timed: bool = True) -> T:
        """`timed` False: no deadline around the whole operation (a fork: many steps, each bounded on its own)."""
        start = time.perf_counter()
        try:
            if self._deadlines is None or not timed or operation in self._self_timed:
                return await call
            async with asyncio.timeout(None) as deadline:
                self._deadlines.watch(deadline)
                try:
                    return await call
                finally:
                    self._deadlines.forget(deadline)
        except TimeoutError:
            self._metrics.store_errors.labels(operation, 'timeout').inc()
            raise StoreTimeout(cast(float, self._timeout)) from None
        except StoreTimeout:  # a self-timed operation's
            self._metrics.store_errors.labels(operation, 'timeout').inc()
            raise
        except BackendUnavailable:
            self._metrics.store_errors.labels(operation, 'unavailable').inc()
            raise
        except MemsvcError:  # an answer, not a failure of the store (e.g. search on a store without it)
            raise
        except Exception:
            self._metrics.store_errors.labels(operation, 'internal').inc()
            raise
        finally:
            self._metrics.observe_store(operation, time.perf_counter() - start)

    async def ping(self) -> None:
        return await self._call('ping', self.inner.ping())

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        return await self._call('create_session', self.inner.create_session(tenant, record, idempotency=idempotency))

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        return await self._call('get_session', self.inner.get_session(tenant, session_id, with_messages=with_messages))

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool, where: Where = ()
    ) -> tuple[list[StoredSession], bool]:
        call = self.inner.list_sessions(tenant, limit=limit, after=after, with_messages=with_messages, where=where)
        return await self._call('list_sessions', call)

    async def index_session(self, tenant: str, session_id: str) -> bool:
        return await self._call('index_session', self.inner.index_session(tenant, session_id))

    async def count_sessions(self, tenant: str) -> int:
        return await self._call('count_sessions', self.inner.count_sessions(tenant), timed=False)

    async def reindex(self, tenant: str) -> AsyncIterator[int]:
        """Each batch measured, none within the deadline (as `export_ids`' pages)."""
        batches = self.inner.reindex(tenant)
        while True:
            try:
                done = await self._call('reindex', anext(batches), timed=False)
            except StopAsyncIteration:
                return
            yield done

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        call = self.inner.update_metadata(tenant, session_id, apply, now, expected_version=expected_version)
        return await self._call('update_metadata', call)

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        call = self.inner.delete_session(tenant, session_id, expected_version=expected_version)
        return await self._call('delete_session', call)

    async def erase_session(self, tenant: str, session_id: str) -> bool:
        return await self._call('erase_session', self.inner.erase_session(tenant, session_id))

    async def append_messages(
        self,
        tenant: str,
        session_id: str,
        bodies: list[bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
        records: Sequence[int] | None = None,
    ) -> Appended:
        call = self.inner.append_messages(
            tenant, session_id, bodies, now, expected_version=expected_version, idempotency=idempotency, records=records
        )
        return await self._call('append_messages', call)

    async def fork_session(
        self, tenant: str, fork: Fork, *, idempotency: Idempotency | None = None, with_messages: bool = True
    ) -> StoredSession | None:
        call = self.inner.fork_session(tenant, fork, idempotency=idempotency, with_messages=with_messages)
        return await self._call('fork_session', call, timed=False)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        return await self._call('get_messages', self.inner.get_messages(tenant, session_id, selection))

    async def get_counted_messages(self, tenant: str, session_id: str, selection: MessageRange) -> CountedPage | None:
        return await self._call('get_counted_messages', self.inner.get_counted_messages(tenant, session_id, selection))

    async def read_window(self, tenant: str, session_id: str, limit: int | None, head: int) -> WindowRead | None:
        return await self._call('read_window', self.inner.read_window(tenant, session_id, limit, head))

    async def set_summary(
        self,
        tenant: str,
        session_id: str,
        summary: bytes,
        through_id: int,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        call = self.inner.set_summary(
            tenant, session_id, summary, through_id, now, expected_version=expected_version, idempotency=idempotency
        )
        return await self._call('set_summary', call)

    async def get_summary(self, tenant: str, session_id: str) -> bytes | None:
        return await self._call('get_summary', self.inner.get_summary(tenant, session_id))

    async def delete_summary(
        self,
        tenant: str,
        session_id: str,
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Summarized | None:
        call = self.inner.delete_summary(
            tenant, session_id, now, expected_version=expected_version, idempotency=idempotency
        )
        return await self._call('delete_summary', call)

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        call = self.inner.clear_messages(tenant, session_id, now, expected_version=expected_version)
        return await self._call('clear_messages', call)

    async def delete_message(
        self, tenant: str, session_id: str, message_id: int, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        call = self.inner.delete_message(tenant, session_id, message_id, now, expected_version=expected_version)
        return await self._call('delete_message', call)

    async def truncate_messages(
        self, tenant: str, session_id: str, after: int, now: datetime, *, expected_version: int | None = None
    ) -> Truncated | None:
        call = self.inner.truncate_messages(tenant, session_id, after, now, expected_version=expected_version)
        return await self._call('truncate_messages', call)

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        call = self.inner.search(tenant, query, limit=limit, session_id=session_id, role=role)
        return await self._call('search', call)

    async def export_ids(self, tenant: str) -> AsyncGenerator[list[str]]:
        """Each page measured, none within the deadline: the first takes the snapshot, a call per few hundred
        sessions, each bounded on its own (as a fork's steps are)."""
        async with contextlib.aclosing(self.inner.export_ids(tenant)) as pages:
            while True:
                try:
                    page = await self._call('export_ids', anext(pages), timed=False)
                except StopAsyncIteration:
                    return
                yield page

    async def read_export(self, tenant: str, session_id: str, after: int, limit: int, budget: int) -> ExportRead | None:
        return await self._call('read_export', self.inner.read_export(tenant, session_id, after, limit, budget))

    @contextlib.asynccontextmanager
    async def importing(self, tenant: str, image: SessionImage, *, replace: bool) -> AsyncIterator[ImportWriter]:
        """Each step within the deadline (an import takes as long as its line)."""
        async with self.inner.importing(tenant, image, replace=replace) as writer:
            yield _TimedWriter(self, writer)


class _TimedWriter:
    def __init__(self, store: InstrumentedStore, writer: ImportWriter) -> None:
        self._store, self._writer = store, writer

    async def write(self, messages: list[bytes], records: list[int]) -> None:
        await self._store._call('import_write', self._writer.write(messages, records))

    async def publish(self, gaps: Gaps) -> None:
        await self._store._call('import_publish', self._writer.publish(gaps))
