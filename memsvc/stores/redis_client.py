"""Talking to Redis: the client made from the settings, its errors translated into 503s, and the Coalescer
that sends the calls of concurrent requests as one pipeline. What is stored where is `redis.py`'s business."""

import asyncio
import contextlib
import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from hiredis import pack_command
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from memsvc.errors import BackendUnavailable, StoreTimeout
from memsvc.settings import Settings

CLUSTER_SCHEMES = {'redis+cluster': 'redis', 'rediss+cluster': 'rediss'}
"""`REDIS_URL=redis+cluster://host:port` (or `rediss+cluster://`) connects to a Redis Cluster through
any one of its nodes."""

Client = Redis | RedisCluster


def masked_url(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ''
    host = parts.hostname or ''
    if ':' in host:
        host = f'[{host}]'
    netloc = f'{user}:***@{host}' + (f':{parts.port}' if parts.port is not None else '')
    return urlunsplit(parts._replace(netloc=netloc))


def create_client(settings: Settings) -> Client:
    """A client for `settings.redis_url` with bounded, explicit limits (see the `redis_*` settings).

    A single Redis gets a `BlockingConnectionPool`: when all connections are busy a request waits up to
    `redis_pool_timeout` for one instead of failing at once (redis-py's default pool raises "Too many
    connections"). Commands are never retried by the client: a write whose reply was lost may have
    been applied, so the caller gets 503 and decides. Each connection is named `memsvc:<pid>`.
    """
    scheme, _, rest = settings.redis_url.partition('://')
    common: dict[str, Any] = {
        'socket_connect_timeout': settings.redis_connect_timeout,
        'socket_timeout': settings.redis_socket_timeout,
        'client_name': f'memsvc:{os.getpid()}',
        'retry': Retry(NoBackoff(), 0),
    }
    try:
        if scheme in CLUSTER_SCHEMES:
            # One operation holds at most two connections at once (a session's node and its index's node).
            return RedisCluster.from_url(
                f'{CLUSTER_SCHEMES[scheme]}://{rest}', max_connections=2 * settings.redis_max_connections, **common
            )
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout,
            **common,
        )
        return Redis.from_pool(pool)
    except (ValueError, RedisError, RedisClusterException) as exc:
        raise BackendUnavailable(f'REDIS_URL {masked_url(settings.redis_url)} cannot be used: {exc}') from None


CLIENT_ERRORS = (RedisError, RedisClusterException, OSError)


def translated(exc: BaseException) -> BackendUnavailable:
    error = BackendUnavailable(f'Redis did not answer ({type(exc).__name__}); retry shortly')
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Translate the client's errors, timeouts included, into `BackendUnavailable`."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise translated(exc) from exc


class Guard:
    """Around every operation (`RedisStore._call`): the Cluster's connection bound, and error translation.

    A class, not `asynccontextmanager` around `unavailable()`: those two generator-based context
    managers cost ~5 µs per operation, this under 1 µs. It keeps no state of its own per operation, so
    one instance serves them all.
    """

    __slots__ = ('_pool', '_slots', '_timeout')

    def __init__(self, slots: asyncio.Semaphore | None, timeout: float, pool: ConnectionPool | None) -> None:
        self._slots, self._timeout, self._pool = slots, timeout, pool

    async def __aenter__(self) -> None:
        if self._slots is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise BackendUnavailable(f'no Redis connection free within {self._timeout} s') from None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._slots is not None:
            self._slots.release()
        if isinstance(exc, CLIENT_ERRORS):
            if isinstance(exc, RedisConnectionError) and self._pool is not None:
                # A lost connection means a restarted (or failed-over) Redis: the idle connections are dead
                # too. Drop them now, so that each does not cost a request its 503 once Redis is back.
                with contextlib.suppress(*CLIENT_ERRORS):
                    await self._pool.disconnect(inuse_connections=False)
            raise translated(exc) from exc


Entry = tuple[bytes, int, asyncio.Future[Any], AsyncScript | None, Sequence[str], Sequence[Any]]
"""A queued call: its packed commands, how many replies they get (the last one is the caller's), its caller's
future, and for a script call what a reload after NOSCRIPT needs (None for a transaction)."""
_MULTI, _EXEC = pack_command((b'MULTI',)), pack_command((b'EXEC',))


class Coalescer:
    """Sends the script calls of concurrent requests as one pipeline per event-loop iteration.

    Each call queues its EVALSHA and waits; the first call of an iteration schedules a flush for the
    end of it, which sends everything queued on one pooled connection (one write, one read) and hands
    each caller its own reply or error. Under load this replaces a connection checkout, a write and a
    read per request by one per batch: get-last-20 needed 224 µs of CPU per request with a call per
    request and a fraction of that batched (see the commit message for the figures). Calls stay
    independent: each script is atomic on its own, a failed call fails only its caller, and a
    connection error or timeout fails the batch it hit. Single Redis only; Cluster calls go direct.

    The batch is written and read on the connection directly rather than through redis-py's Pipeline:
    hiredis packs the commands (0.7 µs a command, redis-py's packer 6 µs) and the replies are read under
    one deadline for the batch (`socket_timeout`), not one libuv timer per reply. 19.5 -> 9.5 µs of CPU
    per command in batches of 32. Replies already received are taken from the connection's hiredis reader
    directly; redis-py's `read_response` (four coroutines and its checks per reply) is called only to read
    more from the socket: 16k fewer instructions per append, 10k per get-last-20.

    Callers get the client's errors already translated (`BackendUnavailable`), as `RedisStore._call` does.
    The store deadline (`deadline`, `Settings.store_deadline()`) is kept here too, with one timer for the
    whole batch rather than one per call in `InstrumentedStore` (21k instructions per get-last-20, 6 %):
    past it, every call of the batch not yet answered gets `StoreTimeout`, which `InstrumentedStore` reports
    as its own deadline, and the connection is dropped (its replies may still come). A call that
    must reload its script after NOSCRIPT runs on past the batch, bounded by the client's own timeouts.
    """

    def __init__(self, client: Redis, read_timeout: float, deadline: float | None) -> None:
        self._pool = client.connection_pool
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._queue: list[Entry] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Run `script`; the future gets its reply."""
        packed = pack_command((b'EVALSHA', script.sha, len(keys), *keys, *args))
        return self._queue_entry(packed, 1, script, keys, args)

    def command(self, *command: Any) -> asyncio.Future[Any]:
        """Run one plain command; the future gets its reply."""
        return self._queue_entry(pack_command(command), 1, None, (), ())

    def transaction(self, *commands: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Run `commands` as one MULTI/EXEC; the future gets their replies, as EXEC answers."""
        packed = b''.join((_MULTI, *map(pack_command, commands), _EXEC))
        return self._queue_entry(packed, len(commands) + 2, None, (), ())

    def _queue_entry(
        self, packed: bytes, replies: int, script: AsyncScript | None, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self._queue.append((packed, replies, future, script, keys, args))
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[Entry]) -> None:
        deadline = asyncio.timeout(self._deadline)
        try:
            async with deadline:
                await self._exchange(batch)
        except BaseException as exc:  # the calls not answered get the error
            if isinstance(exc, RedisConnectionError):  # as `Guard` does: the idle connections are dead too
                with contextlib.suppress(*CLIENT_ERRORS):
                    await self._pool.disconnect(inuse_connections=False)
            expired = deadline.expired()
            for entry in batch:
                if not entry[2].done():
                    entry[2].set_exception(
                        StoreTimeout(cast(float, self._deadline)) if expired
                        else translated(exc) if isinstance(exc, CLIENT_ERRORS) else exc
                    )  # fmt: skip
            if not isinstance(exc, Exception):
                raise

    async def _exchange(self, batch: list[Entry]) -> None:
        """Write the batch on one pooled connection and settle each call with its reply."""
        pool = self._pool
        connection = await pool.get_connection()  # within the pool timeout, or ConnectionError
        try:
            await connection.send_packed_command(b''.join([entry[0] for entry in batch]))
            parser = getattr(connection, '_parser', None)
            reader = parser._reader if isinstance(parser, _AsyncHiredisParser) else None
            async with asyncio.timeout(self._read_timeout):
                for entry in batch:
                    for _ in range(entry[1]):  # a transaction's +OK and +QUEUED come before EXEC's reply
                        reply = NOT_ENOUGH_DATA if reader is None else reader.gets()
                        if reply is NOT_ENOUGH_DATA:
                            try:
                                reply = await connection.read_response(timeout=math.inf)  # the batch has the deadline
                            except ResponseError as exc:
                                reply = exc
                        elif isinstance(reply, RedisConnectionError):  # as read_response: "LOADING", "MASTERDOWN"...
                            raise reply
                    self._settle(entry, reply)
        except BaseException:  # failed, timed out or past the deadline: replies may still come, so drop it
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    @staticmethod
    def _settle(entry: Entry, reply: Any) -> None:
        _, replies, future, script, keys, args = entry
        if future.done():  # its caller went away
            return
        if replies > 1 and isinstance(reply, list):  # a transaction: a command that failed fails it
            for part in reply:
                if isinstance(part, Exception):
                    reply = part
        if not isinstance(reply, Exception):
            future.set_result(reply)
        elif isinstance(reply, NoScriptError) and script is not None:  # e.g. Redis restarted: load it again
            retry = asyncio.ensure_future(script(keys=keys, args=args))
            retry.add_done_callback(functools.partial(_settle, future))
        else:
            future.set_exception(translated(reply))


def _settle(future: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if source.cancelled():
        future.cancel()
    elif (error := source.exception()) is not None:
        future.set_exception(translated(error) if isinstance(error, CLIENT_ERRORS) else error)
    else:
        future.set_result(source.result())
