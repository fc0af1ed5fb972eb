"""How the Redis store's calls reach Redis: a script, commands in one round trip, or a MULTI/EXEC.

`RedisStore` is written once against `Transport`; `transport_for` picks the implementation for the client:
`Coalescer` for a single Redis, `ClusterTransport` for a Cluster. Both translate the client's errors into
`BackendUnavailable` (`translated`, the one place that does) and never retry a command on their own: a
write whose reply was lost may have been applied, so the caller gets 503 and decides.

This is the only module that touches redis-py's private parser (`redis._parsers.hiredis`), which the
Coalescer reads replies from; `pyproject.toml` pins the redis-py versions it was tested with, and
`tests/test_redis_transport.py` fails, naming what moved, when those names or their behaviour change.
"""

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from memsvc.errors import BackendUnavailable, StoreTimeout
from memsvc.settings import Settings
from memsvc.stores.redis_lua import Arg, Script, ScriptCall

Command = tuple[Arg, ...]
"""One command and its arguments, e.g. `('LRANGE', key, -20, -1)`."""

pack_command = cast(Callable[[Command], bytes], hiredis.pack_command)  # its stubs take a 1-tuple
LONG_COMMAND = 128
"""Past this many arguments `pack_any` packs a command itself rather than with hiredis."""


def pack_any(command: Command) -> bytes:
    """`command` in RESP, as `pack_command` (hiredis) packs it, also fast when it is long: hiredis is the faster for
    the usual short command, but its time grows faster than the bytes it packs (a fork's RPUSH of 1,000 messages of
    400 B: 0.8 ms, one join 0.2 ms). For the transactions; a script's or a command's call stays on hiredis alone."""
    if len(command) <= LONG_COMMAND:
        return pack_command(command)
    parts = [b'*%d\r\n' % len(command)]
    for arg in command:
        value = arg if type(arg) is bytes else _encoded(arg)
        parts += (b'$%d\r\n' % len(value), value, b'\r\n')
    return b''.join(parts)  # the one copy of the arguments


def _encoded(arg: Arg) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, float):
        return repr(arg).encode()
    if isinstance(arg, int):
        return b'%d' % arg
    return bytes(arg)


CLIENT_ERRORS = (RedisError, RedisClusterException, OSError)


def translated(exc: BaseException) -> BackendUnavailable:
    """The client's error (timeouts included) as the 503 the store reports; the original is its cause."""
    error = BackendUnavailable(f'Redis did not answer ({type(exc).__name__}); retry shortly')
    error.__cause__ = exc
    return error


class Transport(Protocol):
    """What `RedisStore` needs from Redis. Replies are as Redis sends them (RESP3 or RESP2), bytes undecoded;
    every failure of a call, an error reply included, reaches the caller as `BackendUnavailable`
    (`StoreTimeout` past the store deadline)."""

    spans_slots: bool
    """True on Cluster: keys with different hash tags may be on different nodes, so one script or transaction
    touches one session's keys or the tenant's index, never both."""
    keeps_deadline: bool
    """True when every call carries the store deadline itself (`StoreTimeout` past it)."""

    async def open(self) -> None:
        """Check that Redis answers (on Cluster, learn its slots first)."""

    async def ping(self) -> None: ...

    def script(self, call: ScriptCall) -> Awaitable[Any]:
        """Run a script bound to its values (`Script.bind`); its reply."""

    def command(self, *command: Arg) -> Awaitable[Any]:
        """One command; its reply."""

    def commands(self, *commands: Command) -> Awaitable[list[Any]]:
        """Commands on any keys, in one round trip (per node); their replies. Not atomic as a whole."""

    def transaction(self, *commands: Command) -> Awaitable[list[Any]]:
        """Commands on one hash tag's keys as one MULTI/EXEC; their replies. A command that failed fails it."""

    def packed_transaction(
        self, packed: bytes, count: int, commands: Callable[[], Sequence[Command]]
    ) -> Awaitable[list[Any]]:
        """`transaction(*commands())`, given those `count` commands already packed in RESP (MULTI and EXEC
        included), which a single Redis takes as they are: for a hot read whose packing by one formatting costs
        less than by `pack_command` each."""


def transport_for(client: Redis | RedisCluster, settings: Settings) -> Transport:
    if isinstance(client, RedisCluster):
        return ClusterTransport(client, settings.redis_max_connections, settings.redis_pool_timeout)
    return Coalescer(client, settings.redis_socket_timeout, settings.store_deadline())


def hiredis_reader(connection: Connection) -> hiredis.Reader | None:
    """The hiredis reader behind `connection`'s parser (redis-py private API), or None when its parser is not
    redis-py's hiredis parser (hiredis is a dependency of memsvc, so only a client made with another
    `parser_class` has none).

    Replies already received are taken from the reader directly; `read_response` is called only when it needs
    more bytes from the socket. With no reader every reply goes through `read_response`: the same answers.
    """
    parser = getattr(connection, '_parser', None)
    return parser._reader if isinstance(parser, _AsyncHiredisParser) else None


Entry = tuple[bytes, int, asyncio.Future[Any], Script | None, list[Arg]]
"""A queued call: its packed commands, how many replies they get (the last one is the caller's), its caller's
future, and for a script call what sending it again with EVAL after NOSCRIPT needs."""
_MULTI, _EXEC = pack_command(('MULTI',)), pack_command(('EXEC',))


class Coalescer:
    """The transport for a single Redis: the scripts, commands and transactions of concurrent requests go
    out together, as one pipeline per event-loop iteration.

    Each call queues its packed commands and waits; the first call of an iteration schedules a flush for the
    end of it, which sends everything queued on one pooled connection (one write, one read) and hands each
    caller its own reply or error. Under load this replaces a connection checkout, a write and a read per
    request by one per batch. Calls stay independent: each script or transaction is atomic on its own, a
    failed call fails only its caller, and a connection error or timeout fails the batch it hit.

    The batch is written and read on the connection directly rather than through redis-py's Pipeline:
    hiredis packs the commands, the replies are read under one deadline for the batch (`socket_timeout`)
    rather than one timer per reply, and replies already received come from the hiredis reader
    (`hiredis_reader`) without redis-py's per-reply coroutines.

    The store deadline (`deadline`, `Settings.store_deadline()`) is kept here too, with one timer for the
    whole batch rather than one per call in `InstrumentedStore`: past it, every call of the batch not yet
    answered gets `StoreTimeout`, and the connection is dropped (its replies may still come). A script that
    finds itself unloaded (NOSCRIPT, e.g. after a restart) is sent again with EVAL in a later batch.
    """

    spans_slots = False
    keeps_deadline = True

    def __init__(self, client: Redis, read_timeout: float, deadline: float | None) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._queue: list[Entry] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        try:
            await self._client.ping()
        except CLIENT_ERRORS as exc:
            raise translated(exc) from exc

    async def ping(self) -> None:
        await self.command('PING')

    def script(self, call: ScriptCall) -> asyncio.Future[Any]:
        script, tail = call
        return self._queue_entry(pack_command(('EVALSHA', script.sha, *tail)), 1, script, tail)

    def command(self, *command: Arg) -> asyncio.Future[Any]:
        return self._queue_entry(pack_command(command), 1, None, [])

    def transaction(self, *commands: Command) -> asyncio.Future[Any]:
        packed = b''.join((_MULTI, *map(pack_any, commands), _EXEC))
        return self._queue_entry(packed, len(commands) + 2, None, [])

    commands = transaction
    """On one Redis a MULTI/EXEC is as cheap as a pipeline and is one entry with one reply to hand back."""

    def packed_transaction(
        self, packed: bytes, count: int, commands: Callable[[], Sequence[Command]]
    ) -> asyncio.Future[Any]:
        return self._queue_entry(packed, count + 2, None, [])

    def _queue_entry(self, packed: bytes, replies: int, script: Script | None, tail: list[Arg]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self._queue.append((packed, replies, future, script, tail))
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
            if isinstance(exc, RedisConnectionError):
                # A lost connection means a restarted (or failed-over) Redis: the idle connections are dead
                # too. Drop them now, so that each does not cost a request its 503 once Redis is back.
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
            reader = hiredis_reader(connection)
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

    def _settle(self, entry: Entry, reply: Any) -> None:
        _, replies, future, script, tail = entry
        if future.done():  # its caller went away
            return
        if replies > 1 and isinstance(reply, list):  # a transaction: a command that failed fails it
            for part in reply:
                if isinstance(part, Exception):
                    reply = part
        if not isinstance(reply, Exception):
            future.set_result(reply)
        elif isinstance(reply, NoScriptError) and script is not None:  # e.g. Redis restarted: EVAL loads it
            again = self._queue_entry(pack_command(('EVAL', script.source, *tail)), 1, None, [])
            again.add_done_callback(lambda done: _pass_on(done, future))
        else:
            future.set_exception(translated(reply))


def _pass_on(source: asyncio.Future[Any], future: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if source.cancelled():
        future.cancel()
    elif (error := source.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(source.result())


class _Bound:
    """Around every Cluster call: at most `connections` calls at once, and the client's errors translated.

    redis-py's async Cluster client has no blocking pool (past its limit it fails at once); this gives it
    the single Redis's wait-then-503. A class rather than a generator-based context manager, which costs
    more per call; it keeps no state per call, so one instance serves them all.
    """

    __slots__ = ('_slots', '_timeout')

    def __init__(self, connections: int, timeout: float) -> None:
        self._slots, self._timeout = asyncio.Semaphore(connections), timeout

    async def __aenter__(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise BackendUnavailable(f'no Redis connection free within {self._timeout} s') from None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._slots.release()
        if isinstance(exc, CLIENT_ERRORS):
            raise translated(exc) from exc


class ClusterTransport:
    """The transport for a Redis Cluster: redis-py's Cluster client routes each call to its slot's node.

    A call holds at most one connection per node; `commands` sends to each node its share in one pipeline.
    Calls carry no store deadline of their own: `InstrumentedStore` keeps it around each operation.
    """

    spans_slots = True
    keeps_deadline = False

    def __init__(self, client: RedisCluster, connections: int, pool_timeout: float) -> None:
        self._client = client
        self._bound = _Bound(connections, pool_timeout)

    async def open(self) -> None:
        try:
            await self._client.initialize()
            await self._client.ping()
        except CLIENT_ERRORS as exc:
            raise translated(exc) from exc

    async def ping(self) -> None:
        async with self._bound:
            await self._client.ping()

    async def script(self, call: ScriptCall) -> Any:
        script, tail = call
        async with self._bound:
            try:
                return await self._client.execute_command('EVALSHA', script.sha, *tail)
            except NoScriptError:  # a node restarted or was added: EVAL loads it there
                return await self._client.execute_command('EVAL', script.source, *tail)

    async def command(self, *command: Arg) -> Any:
        async with self._bound:
            return await self._client.execute_command(*command)

    async def commands(self, *commands: Command) -> list[Any]:
        return await self._pipeline(commands, transaction=False)

    async def transaction(self, *commands: Command) -> list[Any]:
        return await self._pipeline(commands, transaction=True)

    async def packed_transaction(
        self, packed: bytes, count: int, commands: Callable[[], Sequence[Command]]
    ) -> list[Any]:
        return await self._pipeline(commands(), transaction=True)

    async def _pipeline(self, commands: Sequence[Command], *, transaction: bool) -> list[Any]:
        async with self._bound:
            pipe = self._client.pipeline(transaction=transaction)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()
