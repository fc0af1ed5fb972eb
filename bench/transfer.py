"""The `transfer` section of `python -m bench` (issue 16, "Speed"): export and import of 1,000,000 messages.

The data is made here, as NDJSON (10,000 sessions of 100 messages, as the export writes them), in a second or two,
rather than appended through the API. Then, each server pinned to the server core and this client beside Redis:

- memsvc on `in_memory` imports the file, then exports it (messages per second; the server's RSS sampled every 20 ms
  while it exports: the most above what it held before, the export's own memory);
- memsvc on `redis` imports that export (target: 20,000 messages/s), then exports it (target: 50,000 messages/s;
  RSS as above);
- the two exports are compared byte for byte: the round trip in_memory -> export -> redis import -> export.

Beside the wall-clock rates, the messages per second of memsvc's own CPU time: what one free core would do, a figure
that a machine busy with other work (whose wall clock it stretches) moves less.

Every transfer streams both ways (aiohttp on this side too), as `memsvc export` and `memsvc import` do.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.servers import Server, start_memsvc
from tests.servers import RedisServer

MESSAGES = 1_000_000
SESSION_MESSAGES = 100
CHUNK = 256 * 1024
API = '/api/v1/chat'
TARGET_EXPORT = 50_000
TARGET_IMPORT = 20_000
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=600)


def make_lines(path: Path) -> int:
    """Write MESSAGES messages as NDJSON sessions; return the file's size."""
    start = 1_767_225_600_000_000  # 2026-01-01, in µs
    with path.open('wb') as out:
        for session in range(MESSAGES // SESSION_MESSAGES):
            messages = []
            for n in range(1, SESSION_MESSAGES + 1):
                role = 'user' if n % 2 else 'assistant'
                stamp = _stamp(start + session * 1_000_000 + n)
                text = f'message {n} of session {session}: which train goes from Munich to Vienna in the morning?'
                messages.append({'id': n, 'role': role, 'content': text, 'timestamp': stamp})
            line = {
                'id': f'bench-{session}',
                'created_at': _stamp(start + session * 1_000_000),
                'updated_at': _stamp(start + session * 1_000_000 + SESSION_MESSAGES),
                'metadata': {'user_id': f'user-{session % 1000}'},
                'next_id': SESSION_MESSAGES + 1,
                'messages': messages,
            }
            out.write(orjson.dumps(line) + b'\n')
    return path.stat().st_size


def _stamp(micros: int) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + f'.{fraction:06d}Z'


async def _upload(path: Path) -> AsyncIterator[bytes]:
    with path.open('rb') as source:
        while data := source.read(CHUNK):
            yield data


async def import_file(url: str, path: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(
            f'{url}{API}/import', data=_upload(path), headers={'Content-Type': 'application/x-ndjson'}
        ) as reply,
    ):
        result = await reply.json()
    return time.perf_counter() - started, result


async def export_file(url: str, path: Path) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(f'{url}{API}/export') as reply:
        with path.open('wb') as out:
            async for data in reply.content.iter_chunked(CHUNK):
                out.write(data)
    return time.perf_counter() - started


def with_rss(server: Server, work: Any) -> tuple[Any, int, int]:
    """Run `work()`, sampling the server's RSS meanwhile: (its result, RSS before, the highest RSS seen)."""
    before = server.rss_bytes()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], server.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, before, peak[0]


def _store(store: str, workdir: Path, redis_server: RedisServer, source: Path, exported: Path) -> dict[str, Any]:
    env = {'REDIS_URL': redis_server.url} if store == 'redis' else {}
    server = start_memsvc(store, workdir, env={**env, 'MEMSVC_KEY_PREFIX': 'benchxfer'})
    try:
        cpu = server.cpu_seconds()
        seconds, result = asyncio.run(import_file(server.url, source))
        assert result['imported'] == MESSAGES // SESSION_MESSAGES, result
        import_cpu, cpu = server.cpu_seconds() - cpu, server.cpu_seconds()
        export_seconds, before, peak = with_rss(server, lambda: asyncio.run(export_file(server.url, exported)))
        export_cpu = server.cpu_seconds() - cpu
    finally:
        server.stop()
    row = {
        'store': store,
        'import_messages_per_second': MESSAGES / seconds,
        'export_messages_per_second': MESSAGES / export_seconds,
        'import_messages_per_cpu_second': MESSAGES / import_cpu,
        'export_messages_per_cpu_second': MESSAGES / export_cpu,
        'rss_before_export_bytes': before,
        'rss_export_peak_above_bytes': peak - before,
    }
    print(
        f'  {store:<10} import {row["import_messages_per_second"]:9,.0f} messages/s ({seconds:5.1f} s; '
        f'{row["import_messages_per_cpu_second"]:,.0f} per second of memsvc CPU), export '
        f'{row["export_messages_per_second"]:9,.0f} messages/s ({export_seconds:5.1f} s; '
        f'{row["export_messages_per_cpu_second"]:,.0f} per CPU second); RSS while exporting: '
        f'{(peak - before) / 2**20:.1f} MiB above the {before / 2**20:.0f} MiB it held'
    )
    return row


def section_transfer(workdir: Path, redis_server: RedisServer) -> dict[str, Any]:
    print(f'\nexport and import of {MESSAGES:,} messages (sessions of {SESSION_MESSAGES})')
    made = workdir / 'made.ndjson'
    started = time.perf_counter()
    size = make_lines(made)
    print(f'  made {size / 2**20:.0f} MiB of NDJSON in {time.perf_counter() - started:.1f} s')
    from_memory, from_redis = workdir / 'from-memory.ndjson', workdir / 'from-redis.ndjson'
    rows = [_store('in_memory', workdir, redis_server, made, from_memory)]
    rows.append(_store('redis', workdir, redis_server, from_memory, from_redis))
    same = from_memory.read_bytes() == from_redis.read_bytes()
    print(f'  round trip in_memory -> export -> redis import -> export: {"byte for byte" if same else "DIFFERENT"}')
    return {'messages': MESSAGES, 'session_messages': SESSION_MESSAGES, 'stores': rows, 'round_trip_identical': same}


def transfer_targets(transfer: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for row in transfer.get('stores', []):
        if row['store'] != 'redis':
            continue
        for what, floor in (('export', TARGET_EXPORT), ('import', TARGET_IMPORT)):
            value = row[f'{what}_messages_per_second']
            checks.append(
                {'target': f'memsvc-redis {what} >= {floor:,} messages/s', 'value': value, 'met': value >= floor}
            )
    if 'round_trip_identical' in transfer:
        same = transfer['round_trip_identical']
        checks.append({'target': 'round trip in_memory -> redis byte for byte', 'value': float(same), 'met': same})
    return checks
