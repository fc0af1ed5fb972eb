"""Event streams across `memsvc serve` processes: replicas on one Redis, a Redis restart, SIGTERM.

Every wait is bounded by a generous deadline; nothing asserts on how long something took."""

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.events_client import events
from tests.helpers import API
from tests.servers import RedisServer, clean_env, free_port, wait_until_serving

WRITERS = 8
MESSAGES = 1000
DEADLINE_SECONDS = 120.0


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f'http://127.0.0.1:{self.port}'


def _serve(tmp_path: Path, name: str, **env: str) -> Replica:
    port = free_port()
    log = (tmp_path / f'{name}.log').open('wb')
    process = subprocess.Popen(
        [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)],
        env=clean_env(MEMSVC_LOG_LEVEL='WARNING', **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    wait_until_serving(port, process)
    return Replica(port, process)


@pytest.fixture
def replicas(own_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    prefix = f'events-{uuid.uuid4().hex[:8]}'
    env = {'MEMORY_TYPE': 'redis', 'REDIS_URL': own_redis.url, 'MEMSVC_KEY_PREFIX': prefix}
    started = [_serve(tmp_path, 'a', **env), _serve(tmp_path, 'b', **env)]
    yield started[0], started[1]
    for replica in started:
        replica.process.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            replica.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait()


async def _append_with_retries(http: aiohttp.ClientSession, base: str, session: str, content: str) -> None:
    """An append that a Redis restart may interrupt: retried with the same Idempotency-Key until it is answered,
    so that it is stored once."""
    key = str(uuid.uuid4())
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            async with http.post(
                f'{base}{API}/sessions/{session}/messages',
                json={'role': 'user', 'content': content},
                headers={'Idempotency-Key': key},
            ) as response:
                if response.status == 201:
                    return
                assert response.status == 503, await response.text()
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, 'an append was not answered'
        await asyncio.sleep(0.05)


async def _follow(http: aiohttp.ClientSession, base: str, session: str, last: int) -> list[tuple[int, bytes]]:
    """Read the stream as EventSource does: on any end or error, reconnect with Last-Event-ID. Returns the
    (id, data) of every message event, up to the id `last` (the final message's)."""
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        assert time.monotonic() < deadline, f'the stream did not deliver everything; {len(received)} received'
        after = received[-1][0] if received else 0
        try:
            async with http.get(f'{base}{API}/sessions/{session}/events', headers={'Last-Event-ID': str(after)}) as r:
                if r.status != 200:
                    assert r.status == 503, await r.text()
                    await asyncio.sleep(0.05)
                    continue
                async for event in events(r.content):
                    assert event.kind == 'message', event
                    assert event.id is not None
                    received.append((int(event.id), event.data))
                    if int(event.id) >= last:
                        return received
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.05)


async def _stream_while_writing(a: Replica, b: Replica, restart: RedisServer | None) -> None:
    """A stream on replica B while replica A takes MESSAGES appends from WRITERS concurrent writers (and, with
    `restart`, Redis restarts a third of the way through); then one last append, which ends the reading."""
    session = 'shared'
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http, aiohttp.ClientSession(timeout=timeout) as reader_http:
        async with http.post(f'{a.base}{API}/sessions', json={'id': session}) as created:
            assert created.status == 201
        reader = asyncio.ensure_future(_follow(reader_http, b.base, session, MESSAGES + 1))
        written = 0
        a_third = asyncio.Event()

        async def writer(w: int) -> None:
            nonlocal written
            for n in range(MESSAGES // WRITERS):
                await _append_with_retries(http, a.base, session, f'w{w}-{n}')
                written += 1
                if written >= MESSAGES // 3:
                    a_third.set()

        writing = asyncio.gather(*(writer(w) for w in range(WRITERS)))
        if restart is not None:
            await asyncio.wait_for(a_third.wait(), DEADLINE_SECONDS)
            restart.stop()  # SIGTERM: Redis writes its AOF (fsync on every write) and exits
            restart.launch()
        await asyncio.wait_for(writing, DEADLINE_SECONDS)
        await _append_with_retries(http, a.base, session, 'the end')
        async with http.get(f'{a.base}{API}/sessions/{session}/messages') as response:
            stored = await response.read()
        stored_ids = [m['id'] for m in orjson.loads(stored)]
        assert stored_ids == list(range(1, MESSAGES + 2)), 'every append stored once'
        received = await asyncio.wait_for(reader, DEADLINE_SECONDS)
    assert [number for number, _ in received] == stored_ids, 'each message exactly once, in id order'
    assert b'[' + b','.join(data for _, data in received) + b']' == stored, 'byte for byte what the list answers'


async def test_a_stream_on_one_replica_delivers_every_append_through_another_once_in_order(
    replicas: tuple[Replica, Replica],
) -> None:
    await _stream_while_writing(*replicas, restart=None)


async def test_a_stream_resumes_across_a_redis_restart_with_nothing_missed_or_twice(
    replicas: tuple[Replica, Replica], own_redis: RedisServer
) -> None:
    await _stream_while_writing(*replicas, restart=own_redis)


async def test_a_long_poll_on_one_replica_wakes_on_a_write_through_another(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as http:
        async with http.post(f'{a.base}{API}/sessions', json={'id': 'poll'}) as created:
            assert created.status == 201
        poll = asyncio.ensure_future(http.get(f'{b.base}{API}/sessions/poll/messages?after=0&wait=60'))
        await _until_waiting(http, b, 'long-poll')
        async with http.post(f'{a.base}{API}/sessions/poll/messages', json={'role': 'user', 'content': 'hi'}) as r:
            assert r.status == 201
        response = await asyncio.wait_for(poll, 30)
        assert [m['content'] for m in await response.json()] == ['hi']
        response.release()


async def _until_waiting(http: aiohttp.ClientSession, replica: Replica, what: str) -> None:
    """Until `replica` has a request in flight besides this /metrics one (the waiting one)."""
    deadline = time.monotonic() + 20
    while True:
        async with http.get(f'{replica.base}/metrics') as response:
            text = await response.text()
        if 'memsvc_requests_in_flight 2.0' in text:
            return
        assert time.monotonic() < deadline, f'the {what} did not start waiting'
        await asyncio.sleep(0.02)


def test_sigterm_ends_open_streams_and_exits_promptly(tmp_path: Path) -> None:
    """With streams open, SIGTERM ends them and the process exits 0, well before the drain's bound (60 s here,
    and a keep-alive of 300 s, so neither would end them)."""
    replica = _serve(tmp_path, 'solo', MEMSVC_SHUTDOWN_TIMEOUT='60', MEMSVC_STREAM_KEEPALIVE_SECONDS='300')
    import socket

    socks = []
    try:
        with socket.create_connection(('127.0.0.1', replica.port), timeout=10) as sock:
            body = b'{"id": "s"}'
            sock.sendall(
                b'POST /api/v1/chat/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
                b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body)
            )
            assert b' 201 ' in sock.recv(65536)
        for _ in range(3):
            sock = socket.create_connection(('127.0.0.1', replica.port), timeout=20)
            socks.append(sock)
            sock.sendall(b'GET /api/v1/chat/sessions/s/events HTTP/1.1\r\nHost: x\r\n\r\n')
            assert b' 200 ' in sock.recv(65536)
        replica.process.send_signal(signal.SIGTERM)
        assert replica.process.wait(timeout=20) == 0
        for sock in socks:
            rest = b''
            while chunk := sock.recv(65536):  # the stream's end (chunked encoding's last chunk), then EOF
                rest += chunk
            assert rest.endswith(b'0\r\n\r\n')
    finally:
        for sock in socks:
            sock.close()
        if replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait()
