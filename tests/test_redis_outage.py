"""Redis going away: refuse to start, 503 with Retry-After while it is down or hung (never 404),
recovery by itself when it is back, and no acknowledged write lost. Each test has its own
redis-server (AOF, fsync on every write) so it can stop it."""

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.settings import Settings
from memsvc.stores.redis_client import masked_url
from tests.helpers import API
from tests.servers import RedisServer, clean_env, free_port

PROMISED_SECONDS = 2.0


def outage_settings(server: RedisServer, **overrides: Any) -> Settings:
    """The default timeouts: what the promise of 503 within 2 s is made with."""
    return Settings(memory_type='redis', redis_url=server.url, key_prefix='outage', **overrides)


def figure(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """A measured figure, kept with the test's report (e.g. in a JUnit XML file with junit_family=xunit1)."""
    request.node.user_properties.append((name, value))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    seconds: float


async def call(client: TestClient[Any, Any], method: str, path: str, **kwargs: Any) -> Reply:
    started = time.monotonic()
    async with client.request(method, path, **kwargs) as response:
        body = await response.json()
        return Reply(response.status, dict(response.headers), body, time.monotonic() - started)


def assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503, reply
    assert reply.headers.get('Retry-After'), reply
    assert reply.body['error']['code'] == 'backend_unavailable', reply
    assert reply.seconds < PROMISED_SECONDS, reply


@dataclass
class Writer:
    """Appends one message after another for as long as it runs, remembering what was acknowledged."""

    client: TestClient[Any, Any]
    acknowledged: list[str] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)
    running: bool = True
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_acknowledged(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.acknowledged) < count:
                self.progress.clear()
                await self.progress.wait()

    async def run(self) -> None:
        n = 0
        while self.running:
            content = f'live-{n}'
            async with self.client.post(
                f'{API}/sessions/live/messages', json={'role': 'user', 'content': content}
            ) as response:
                self.statuses.add(response.status)
                if response.status == 201:
                    self.acknowledged.append(content)
                    self.progress.set()
            n += 1
            await asyncio.sleep(0.005)


@pytest.fixture
async def writer(aiohttp_client: AiohttpClient, own_redis: RedisServer) -> AsyncIterator[Writer]:
    client = await aiohttp_client(create_app(outage_settings(own_redis)))
    writing = Writer(client)
    task = asyncio.create_task(writing.run())
    yield writing
    writing.running = False
    await task


async def wait_until_ready(client: TestClient[Any, Any], limit: float = 10) -> float:
    started = time.monotonic()
    while (await call(client, 'GET', '/readyz')).status != 200:
        assert time.monotonic() - started < limit, 'the service did not recover by itself'
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_redis_down_is_503_then_recovers_by_itself_with_every_acknowledged_write(
    own_redis: RedisServer, writer: Writer, request: pytest.FixtureRequest
) -> None:
    client = writer.client
    for n in range(20):
        assert (
            await call(client, 'POST', f'{API}/sessions/kept/messages', json={'role': 'user', 'content': f'k{n}'})
        ).status == 201
    await writer.until_acknowledged(10)

    own_redis.stop(kill=True)  # SIGKILL: only the AOF (fsync always) keeps what was acknowledged
    down = [
        await call(client, 'GET', f'{API}/sessions/kept/messages'),
        await call(client, 'GET', f'{API}/sessions/never-created'),
        await call(client, 'GET', f'{API}/sessions'),
        await call(client, 'POST', f'{API}/sessions/kept/messages', json={'role': 'user', 'content': 'lost?'}),
        await call(client, 'DELETE', f'{API}/sessions/never-created'),
        await call(client, 'GET', '/readyz'),
    ]
    for reply in down:
        assert_unavailable(reply)
    figure(request, 'slowest_503_seconds_when_down', max(reply.seconds for reply in down))
    acknowledged_before = len(writer.acknowledged)
    await asyncio.sleep(0.2)  # the writer keeps trying, and keeps getting 503
    assert 503 in writer.statuses

    own_redis.launch()
    recovery = await wait_until_ready(client)
    assert recovery < PROMISED_SECONDS
    figure(request, 'recovery_seconds_after_restart', recovery)
    await writer.until_acknowledged(acknowledged_before + 10)
    writer.running = False
    await asyncio.sleep(0.05)

    assert writer.statuses <= {201, 503}, 'an outage is never a 404 or a 500'
    kept = await call(client, 'GET', f'{API}/sessions/kept/messages')
    assert [m['content'] for m in kept.body] == [f'k{n}' for n in range(20)] + [m['content'] for m in kept.body[20:]], (
        'the 20 acknowledged messages are there, in order (the unanswered POST may or may not be)'
    )
    live = await call(client, 'GET', f'{API}/sessions/live/messages')
    contents = [m['content'] for m in live.body]
    assert set(writer.acknowledged) <= set(contents)
    figure(request, 'acknowledged_writes', len(writer.acknowledged) + 20)
    figure(request, 'writer_statuses', sorted(writer.statuses))
    ids = [m['id'] for m in live.body]
    assert ids == sorted(set(ids))
    assert (await call(client, 'GET', f'{API}/sessions/never-created')).status == 404


async def test_a_hung_redis_is_503_within_the_timeouts_and_never_404(
    own_redis: RedisServer, aiohttp_client: AiohttpClient, request: pytest.FixtureRequest
) -> None:
    client = await aiohttp_client(create_app(outage_settings(own_redis, redis_max_connections=4)))
    assert (
        await call(client, 'POST', f'{API}/sessions/s/messages', json={'role': 'user', 'content': 'x'})
    ).status == 201

    own_redis.pause()  # accepts connections, answers nothing
    try:
        replies = await asyncio.gather(
            *(call(client, 'GET', f'{API}/sessions/s/messages?limit=20') for _ in range(12)),
            *(call(client, 'GET', f'{API}/sessions/unknown-{n}') for n in range(4)),
            call(client, 'GET', '/readyz'),
        )
    finally:
        own_redis.resume()
    for reply in replies:
        assert_unavailable(reply)  # more requests than connections: the rest wait for the pool, then 503
    figure(request, 'slowest_503_seconds_when_hung', max(reply.seconds for reply in replies))

    await wait_until_ready(client)
    assert (await call(client, 'GET', f'{API}/sessions/s/messages')).status == 200
    assert (await call(client, 'GET', f'{API}/sessions/unknown-0')).status == 404


def test_serve_refuses_to_start_without_redis_in_one_line_naming_the_url(
    request: pytest.FixtureRequest,
) -> None:
    url = f'redis://:s3cret@127.0.0.1:{free_port()}/0'
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, '-m', 'memsvc', 'serve', '--memory-type', 'redis', '--port', str(free_port())],
        env=clean_env(REDIS_URL=url),
        capture_output=True,
        timeout=10,
        check=False,
    )
    figure(request, 'refusal_seconds', time.monotonic() - started)
    figure(request, 'refusal_line', done.stderr.decode().strip())
    assert time.monotonic() - started < 10
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert masked_url(url) in lines[0]
    assert 's3cret' not in lines[0]
