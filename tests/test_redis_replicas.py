"""Replicas share one Redis and see each other's writes at once: two app instances in this process,
and `memsvc serve --workers 2` as real processes."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from tests.conftest import make_settings
from tests.helpers import API
from tests.servers import RedisServer, clean_env, free_port
from tests.test_metrics import request_counts

WRITERS = 50
PER_WRITER = 20


@pytest.mark.parametrize('kind', ['redis', 'redis_cluster'])
async def test_two_instances_take_concurrent_appends_to_one_session_without_losing_any(
    kind: str, request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> None:
    settings = make_settings(kind, request)
    instances: list[TestClient[Any, Any]] = [
        await aiohttp_client(create_app(settings)),
        await aiohttp_client(create_app(settings)),
    ]

    async def writer(w: int) -> list[int]:
        taken = []
        for n in range(PER_WRITER):
            client = instances[(w + n) % 2]  # each writer alternates between the two instances
            response = await client.post(f'{API}/sessions/busy/messages', json={'role': 'user', 'content': f'w{w}-{n}'})
            assert response.status == 201, await response.text()
            taken.append((await response.json())['id'])
        return taken

    taken = await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    total = WRITERS * PER_WRITER
    for ids in taken:
        assert ids == sorted(ids), 'a writer that waits for each answer sees its ids rise'

    lists = []
    for client in instances:
        response = await client.get(f'{API}/sessions/busy/messages')
        assert response.status == 200
        lists.append(await response.json())
    assert lists[0] == lists[1], 'both instances return the same list'
    messages = lists[0]
    assert len(messages) == total
    assert [m['id'] for m in messages] == list(range(1, total + 1))
    assert sorted(id_ for ids in taken for id_ in ids) == list(range(1, total + 1))
    contents = [m['content'] for m in messages]
    for w in range(WRITERS):
        assert [c for c in contents if c.startswith(f'w{w}-')] == [f'w{w}-{n}' for n in range(PER_WRITER)]


def _children(parent: int) -> list[int]:
    """The memsvc worker processes of `parent` (multiprocessing's resource tracker is not one)."""
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
            cmdline = (entry / 'cmdline').read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        if ppid == parent and b'spawn_main' in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Workers:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    children: list[int] = field(default_factory=list)


@pytest.fixture
def workers(redis_server: RedisServer, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workers]:
    """`python -m memsvc serve --workers 2 --memory-type redis` on a free port; stopped with SIGTERM."""
    settings = make_settings('redis', request)
    port = free_port()
    env = clean_env(REDIS_URL=settings.redis_url, MEMSVC_KEY_PREFIX=settings.key_prefix, MEMSVC_LOG_LEVEL='WARNING')
    log = tmp_path / 'memsvc.log'
    with log.open('wb') as out:
        process = subprocess.Popen(
            [sys.executable, '-m', 'memsvc', 'serve', '--workers', '2', '--memory-type', 'redis', '--port', str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = Workers(f'http://127.0.0.1:{port}', process, log)
    try:
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in started.children:  # workers this test started, should the parent have died first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (a worker binds only once its start-up ran)."""
    try:
        sockets = {os.readlink(fd) for fd in (Path('/proc') / str(pid) / 'fd').iterdir()}
        rows = (Path('/proc') / str(pid) / 'net' / 'tcp').read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        fields = row.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == '0A' and int(local.rsplit(':', 1)[1], 16) == port and f'socket:[{inode}]' in sockets:
            return True
    return False


async def test_two_worker_processes_serve_the_same_data(workers: Workers, redis_server: RedisServer) -> None:
    base, process = workers.base, workers.process
    port = int(base.rsplit(':', 1)[1])
    # Both workers must listen before the requests start: the port answers as soon as the first one does, and on
    # a busy machine the second may still be starting up many seconds later (then it would serve nothing).
    deadline = time.monotonic() + 90
    while True:
        children = workers.children = _children(process.pid)
        if len(children) == 2 and all(_listens(pid, port) for pid in children):
            break
        assert process.poll() is None, workers.log.read_text()
        assert time.monotonic() < deadline, f'the workers did not both listen: {workers.log.read_text()}'
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        while True:  # every fresh connection lands on either worker: wait until a few in a row answer
            try:
                answers = [await _status(http, f'{base}/readyz') for _ in range(8)]
                if answers == [200] * 8:
                    break
            except aiohttp.ClientError:
                pass
            assert process.poll() is None, workers.log.read_text()
            assert time.monotonic() < deadline, 'the workers did not become ready'
            await asyncio.sleep(0.1)
        assert sorted(_children(process.pid)) == sorted(children)

        limit = asyncio.Semaphore(20)

        async def write(n: int) -> None:
            async with (
                limit,
                http.post(f'{base}{API}/sessions/shared/messages', json={'role': 'user', 'content': f'm{n}'}) as r,
            ):
                assert r.status == 201

        await asyncio.gather(*(write(n) for n in range(200)))

        async def read() -> list[str]:
            async with limit, http.get(f'{base}{API}/sessions/shared/messages') as r:
                assert r.status == 200
                return [m['content'] for m in await r.json()]

        seen = await asyncio.gather(*(read() for _ in range(100)))
        assert all(sorted(contents) == sorted(f'm{n}' for n in range(200)) for contents in seen)

        # /metrics of whichever worker answers counts the requests of both (the other worker's within the
        # second it takes to add its tally to the shared files)
        route = f'{API}/sessions/{{session_id}}/messages'
        deadline = time.monotonic() + 10
        while True:
            async with http.get(f'{base}/metrics') as r:
                assert r.status == 200
                counts = request_counts(await r.text())
            seen_counts = counts.get((route, 'POST', '201')), counts.get((route, 'GET', '200'))
            if seen_counts == (200, 100) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert seen_counts == (200, 100)

    # Each worker names its Redis connections memsvc:<pid>; both ran the store's commands for requests (a script
    # for each append, LRANGE for each read).
    with redis_server.client() as client:
        served = {
            int(c['name'].removeprefix('memsvc:'))
            for c in client.client_list()
            if c['name'].startswith('memsvc:') and c['cmd'] in ('evalsha', 'lrange')
        }
    assert set(children) <= served

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status
