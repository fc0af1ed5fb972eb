"""What the Redis transport takes from redis-py beyond its public API, checked against a real Redis.

The Coalescer (`memsvc.stores.redis_transport`) writes a batch on a pooled connection itself and takes the
replies from the connection's hiredis reader. These tests fail, saying what moved, when a redis-py release
changes any of that: then the redis-py pin in pyproject.toml must not be raised until the transport follows.
"""

import math
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any, cast

import hiredis
import pytest
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from memsvc.errors import BackendUnavailable
from memsvc.stores import redis_reads, redis_transport
from memsvc.stores.redis_client import create_client
from memsvc.stores.redis_reads import RedisKeys
from tests.conftest import make_settings

MOVED = 'redis-py {version} moved what memsvc.stores.redis_transport relies on: {what}'


def moved(what: str) -> str:
    return MOVED.format(version=metadata.version('redis'), what=what)


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    created = create_client(make_settings('redis', request))
    assert isinstance(created, Redis)
    yield created
    await created.aclose()


def test_the_private_parser_names_are_where_the_transport_imports_them() -> None:
    import redis._parsers.hiredis as private

    assert hasattr(private, 'NOT_ENOUGH_DATA'), moved('redis._parsers.hiredis.NOT_ENOUGH_DATA is gone')
    assert hasattr(private, '_AsyncHiredisParser'), moved('redis._parsers.hiredis._AsyncHiredisParser is gone')


async def test_a_pooled_connection_reads_replies_through_a_hiredis_reader(client: Redis) -> None:
    pool = client.connection_pool
    connection = await pool.get_connection()  # no command name: the form the Coalescer calls
    try:
        await connection.connect()
        reader = redis_transport.hiredis_reader(connection)
        assert isinstance(reader, hiredis.Reader), moved(
            f'connections parse with {type(getattr(connection, "_parser", None)).__name__}, not '
            '_AsyncHiredisParser with a hiredis.Reader in `_reader` (without it every reply takes the slow path)'
        )
        assert reader.gets() is NOT_ENOUGH_DATA, moved('an empty reader no longer answers NOT_ENOUGH_DATA')
        batch = [('SET', 'transport:k', 'v'), ('GET', 'transport:k'), ('LPUSH', 'transport:k', 'x'), ('ECHO', 'end')]
        await connection.send_packed_command(b''.join(redis_transport.pack_command(c) for c in batch))
        first = await connection.read_response(timeout=math.inf)  # reads from the socket into the reader
        assert first in (b'OK', 'OK', True)
        replies: list[object] = []
        while len(replies) < 3:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                replies.append(await connection.read_response(timeout=math.inf))
            else:
                replies.append(reply)
        assert replies[0] == b'v'
        assert isinstance(replies[1], ResponseError), moved(
            'the hiredis reader no longer hands back an error reply as a ResponseError instance'
        )
        assert replies[2] == b'end'
        await connection.send_packed_command(redis_transport.pack_command(('DEL', 'transport:k')))
        assert await connection.read_response(timeout=math.inf) == 1
    finally:
        await pool.release(connection)


async def test_a_batch_through_the_coalescer_answers_each_caller(client: Redis) -> None:
    """The same reads through the transport itself: every reply reaches its own caller, errors included."""
    coalescer = redis_transport.Coalescer(client, read_timeout=30, deadline=None)
    ok = coalescer.command('SET', 'transport:batch', 'v')
    read = coalescer.transaction(('GET', 'transport:batch'), ('STRLEN', 'transport:batch'))
    wrong = coalescer.command('LPUSH', 'transport:batch', 'x')
    assert await ok in (b'OK', True)
    assert await read == [b'v', 1]
    with pytest.raises(BackendUnavailable) as failed:
        await wrong
    assert isinstance(failed.value.__cause__, ResponseError)
    assert await coalescer.command('DEL', 'transport:batch') == 1


def test_a_long_command_is_packed_as_hiredis_packs_it() -> None:
    """Past `LONG_COMMAND` arguments the transport packs a transaction's command itself (a fork's chunk of
    messages): the same bytes as hiredis for every kind of argument it sends."""
    command = ('RPUSH', 'k:{é}', *[b'm' * 400] * 100, *range(-3, 30), 1.5, 1e20, 1 / 3, 'ünï', b'')
    assert len(command) > redis_transport.LONG_COMMAND
    hiredis_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)  # its stubs take a 1-tuple
    assert redis_transport.pack_any(command) == hiredis_pack(command)
    short = ('SET', 'k', 1.5)
    assert redis_transport.pack_any(short) == hiredis_pack(short)


@pytest.mark.parametrize('tenant', ['default', 'tënant ü'])
@pytest.mark.parametrize('first', [-166, -2000, 0])
def test_the_context_windows_read_is_packed_as_hiredis_packs_its_commands(tenant: str, first: int) -> None:
    """The window's first read goes out packed by one bytes formatting (`redis_reads.packed_window_read`): the
    same bytes as hiredis packs for its MULTI, commands and EXEC, keys of any tenant included."""
    keys = RedisKeys('memsvc-test', tenant)
    commands = redis_reads.window_read(keys, 'a-session_1', first)
    assert len(commands) == redis_reads.WINDOW_READ_COMMANDS
    assert redis_reads.window_read_of_empty(keys, 'a-session_1', first)[1:] == commands
    hiredis_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
    expected = b''.join(hiredis_pack(command) for command in [('MULTI',), *commands, ('EXEC',)])
    assert redis_reads.packed_window_read(keys.base('a-session_1').encode(), first) == expected
