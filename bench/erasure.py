"""Erasure in the `people` section of `python -m bench` (issue 16 item 2, "Speed"): 10,000 sessions of one person
erased (`DELETE /sessions?metadata.user_id=…`) while wrk reads the last 20 messages of another session.

Figures: the erasure's time, and get-last-20's req/s while it runs against the same process's undisturbed req/s.
Both req/s come from the server's own request counter (`/metrics`, exact for its process), read at the start and at
the end of the window: the erasure's window is exactly the erasure, whatever its length, and the undisturbed one
is a window of the same wrk run before it (5 s). Three rounds (load, erase), medians. Target: during >= 0.8 x
undisturbed.

Run on the `people` section's server, after its listing rounds, so the index also holds the 100,000 sessions of
the other people. Loading: on redis straight through a `RedisStore` of this process; in_memory over HTTP.
"""

import asyncio
import statistics
import subprocess
import time
import urllib.request
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.measure import API, CONNECTIONS, WRK_SCRIPTS, Scenario, message, wrk
from bench.servers import LOAD_CPU, Server, pinned
from memsvc.models import SessionRecord, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from tests.servers import RedisServer

ERASED = 10_000
PERSON = 'erased-person'
READER = 'erasure-reader'
LOAD_AT_ONCE = 500
ROUNDS = 3
TARGET_RATIO = 0.8
UNDISTURBED_SECONDS = 5
ROUTE = f'{API}/sessions/{{session_id}}/messages'
READ = Scenario('get_last_20', 'get last 20 messages', 'get.lua', (f'path=/sessions/{READER}/messages?limit=20',))


def served(url: str) -> float:
    """How many get-last-20 (`GET …/messages`, 200) the server has answered."""
    with urllib.request.urlopen(f'{url}/metrics', timeout=30) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == 'memsvc_requests_total'
        and sample.labels == {'route': ROUTE, 'method': 'GET', 'status': '200'}
    )


async def _load(server: Server, store: str, redis_server: RedisServer, key_prefix: str, *, reader: bool) -> None:
    """The person's sessions (`e-<n>`, no messages), and with `reader` the session wrk reads (20 messages)."""
    metadata = orjson.dumps({'user_id': PERSON})
    headers = {'Content-Type': 'application/json'}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as client:
        if reader:
            body = orjson.dumps([message(n) for n in range(20)])
            async with client.post(f'{server.url}{API}/sessions/{READER}/messages', data=body, headers=headers) as got:
                assert got.status == 201, await got.text()
        if store == 'redis':
            settings = Settings(memory_type='redis', redis_url=redis_server.url, key_prefix=key_prefix)
            async with open_store(settings) as direct:
                now = utc_now()
                for start in range(0, ERASED, LOAD_AT_ONCE):
                    records = [
                        SessionRecord(f'e-{n}', now, now, metadata, 0) for n in range(start, start + LOAD_AT_ONCE)
                    ]
                    await asyncio.gather(*(direct.create_session('default', record) for record in records))
            return

        async def one(n: int) -> None:
            data = b'{"id":"e-%d","metadata":%s}' % (n, metadata)
            async with client.post(f'{server.url}{API}/sessions', data=data, headers=headers) as reply:
                assert reply.status == 201, await reply.text()

        for start in range(0, ERASED, LOAD_AT_ONCE):
            await asyncio.gather(*(one(n) for n in range(start, start + LOAD_AT_ONCE)))


async def _erase(url: str) -> tuple[int, float, float, float]:
    """The erasure, and the get-last-20 count at its start and end: (erased, seconds, count before, count after)."""
    async with aiohttp.ClientSession() as client:
        before = served(url)
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=600)
        async with client.delete(f'{url}{API}/sessions', params={'metadata.user_id': PERSON}, timeout=timeout) as reply:
            assert reply.status == 200, await reply.text()
            erased = (await reply.json())['deleted']
        seconds = time.monotonic() - started
        return erased, seconds, before, served(url)


def _round(server: Server) -> tuple[int, float, float, float]:
    """One erasure under wrk: (erased, its seconds, get-last-20 req/s undisturbed just before it, and during it)."""
    # one wrk run for both windows, first undisturbed, then the erasure; stopped when they are measured
    argv = ['wrk', '-t1', f'-c{CONNECTIONS}', '-d600s', '--timeout', '10s', '-s', str(WRK_SCRIPTS / READ.script),
            server.url, '--', *READ.args]  # fmt: skip
    load = subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        first, at = served(server.url), time.monotonic()
        time.sleep(UNDISTURBED_SECONDS)
        undisturbed = (served(server.url) - first) / (time.monotonic() - at)
        erased, seconds, before, after = asyncio.run(_erase(server.url))
        return erased, seconds, undisturbed, (after - before) / seconds
    finally:
        load.terminate()
        load.wait()


def erasure(server: Server, store: str, redis_server: RedisServer, key_prefix: str) -> dict[str, Any]:
    """`ROUNDS` rounds of (load 10,000 sessions of one person, erase them under wrk); medians."""
    rounds = []
    for n in range(ROUNDS):
        started = time.monotonic()
        asyncio.run(_load(server, store, redis_server, key_prefix, reader=n == 0))
        loaded = time.monotonic() - started
        if n == 0:
            wrk(server.url, READ, 2)  # warm-up
        rounds.append((loaded, *_round(server)))
    row = {
        'erased': rounds[-1][1],
        'load_seconds': statistics.median(r[0] for r in rounds),
        'erase_seconds': statistics.median(r[2] for r in rounds),
        'undisturbed_rps': statistics.median(r[3] for r in rounds),
        'during_rps': statistics.median(r[4] for r in rounds),
        'ratio': statistics.median(r[4] / r[3] for r in rounds),
        'rounds': [
            dict(zip(('load_seconds', 'erased', 'erase_seconds', 'undisturbed_rps', 'during_rps'), r, strict=True))
            for r in rounds
        ],
    }
    print(
        f'  {store:<10} erasure of {ERASED:,} sessions: {row["erase_seconds"]:.1f} s; get last 20 meanwhile'
        f' {row["during_rps"]:6.0f} req/s, undisturbed {row["undisturbed_rps"]:6.0f} req/s: x{row["ratio"]:.2f}'
        f' (median of {ROUNDS})'
    )
    return row


def erasure_targets(people: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for store, row in people.items():
        if 'erasure' not in row:
            continue
        ratio = row['erasure']['ratio']
        target = f'memsvc-{store} get last 20 during an erasure of {ERASED:,} sessions >= {TARGET_RATIO} x undisturbed'
        checks.append({'target': target, 'value': ratio, 'met': ratio >= TARGET_RATIO})
    return checks
