"""The `people` section of `python -m bench` (issue 16, "Speed"): one person's sessions among many.

- **Filtered listing**: 100,000 sessions of 5,000 people (`user_id`), of which one person holds 20; the listing of
  that person's sessions (`?metadata.user_id=…&limit=20`) against the unfiltered listing (`?limit=20`), both without
  messages, in alternating wrk rounds on the same process (in_memory, then redis). Target: filtered >= 0.8 x.
- **Erasure** (`bench/erasure.py`), then on the same process: 10,000 sessions of one more person erased while wrk
  reads the last 20 messages of another session. Target: those req/s during the erasure >= 0.8 x undisturbed.

Loading: on redis the sessions are written straight through a `RedisStore` of this process (the store's own code,
so the same keys and index as the server's), which takes seconds; in_memory can only be loaded over HTTP.
"""

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.erasure import erasure, erasure_targets
from bench.measure import API, Run, Scenario, timed_run
from bench.servers import Server, start_memsvc
from memsvc.models import SessionRecord, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from tests.servers import RedisServer

SESSIONS = 100_000
PEOPLE = SESSIONS // 20
PERSON = 'u-42'
"""The person listed: one of the 5,000, holding 20 sessions like each of them."""
ROUNDS = 3
LOAD_AT_ONCE = 500
KEY_PREFIX = 'bench-people'
TARGET_FILTERED_RATIO = 0.8

UNFILTERED = Scenario(
    'list_20', 'list sessions (limit 20)', 'get.lua', ('path=/sessions?limit=20&include_messages=false',)
)
FILTERED = Scenario(
    'list_20_person',
    "one person's sessions (limit 20)",
    'get.lua',
    (f'path=/sessions?metadata.user_id={PERSON}&limit=20&include_messages=false',),
)


def session(n: int) -> tuple[str, bytes]:
    return f'p-{n}', orjson.dumps({'user_id': f'u-{n % PEOPLE}', 'n': n})


async def _load_http(url: str) -> None:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one(n: int) -> None:
            session_id, metadata = session(n)
            data = b'{"id":"%s","metadata":%s}' % (session_id.encode(), metadata)
            async with client.post(
                f'{url}{API}/sessions', data=data, headers={'Content-Type': 'application/json'}
            ) as reply:
                if reply.status != 201:
                    raise RuntimeError(f'loading {session_id}: {reply.status} {await reply.text()}')

        for start in range(0, SESSIONS, LOAD_AT_ONCE):
            await asyncio.gather(*(one(n) for n in range(start, min(start + LOAD_AT_ONCE, SESSIONS))))


async def _load_redis(redis_server: RedisServer) -> None:
    settings = Settings(memory_type='redis', redis_url=redis_server.url, key_prefix=KEY_PREFIX)
    async with open_store(settings) as store:
        now = utc_now()
        for start in range(0, SESSIONS, LOAD_AT_ONCE):
            batch = map(session, range(start, start + LOAD_AT_ONCE))
            records = [SessionRecord(sid, now, now, metadata, 0) for sid, metadata in batch]
            await asyncio.gather(*(store.create_session('default', record) for record in records))


def load(server: Server, store: str, redis_server: RedisServer) -> float:
    started = time.monotonic()
    asyncio.run(_load_redis(redis_server) if store == 'redis' else _load_http(server.url))
    return time.monotonic() - started


def section_people(workdir: Path, redis_server: RedisServer, seconds: int, warmup: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for store in ('in_memory', 'redis'):
        env = {'REDIS_URL': redis_server.url, 'MEMSVC_KEY_PREFIX': KEY_PREFIX}
        server = start_memsvc(store, workdir, env=env, name='people')
        try:
            loaded = load(server, store, redis_server)
            runs: dict[str, list[Run]] = {UNFILTERED.name: [], FILTERED.name: []}
            for scenario in (UNFILTERED, FILTERED):
                timed_run(server, scenario, warmup)
            for _ in range(ROUNDS):
                for scenario in (UNFILTERED, FILTERED):
                    runs[scenario.name].append(timed_run(server, scenario, seconds))
            erased = erasure(server, store, redis_server, KEY_PREFIX)
        finally:
            server.stop()
        ratio = statistics.median(
            f.rps / u.rps for f, u in zip(runs[FILTERED.name], runs[UNFILTERED.name], strict=True)
        )
        out[store] = {
            'sessions': SESSIONS,
            'matching': SESSIONS // PEOPLE,
            'load_seconds': loaded,
            'unfiltered_rps': statistics.median(r.rps for r in runs[UNFILTERED.name]),
            'filtered_rps': statistics.median(r.rps for r in runs[FILTERED.name]),
            'filtered_p99_ms': statistics.median(r.p99_ms for r in runs[FILTERED.name]),
            'filtered_ratio': ratio,
            'errors': sum(r.errors for rs in runs.values() for r in rs),
            'erasure': erased,
        }
        row = out[store]
        print(
            f'  {store:<10} {SESSIONS:,} sessions (loaded in {loaded:.0f} s):'
            f" list 20 {row['unfiltered_rps']:6.0f} req/s, one person's 20 {row['filtered_rps']:6.0f} req/s"
            f' (p99 {row["filtered_p99_ms"]:.1f} ms): x{ratio:.2f}'
        )
    return out


def people_targets(people: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for store, row in people.items():
        target = (
            f'memsvc-{store} filtered listing >= {TARGET_FILTERED_RATIO} x unfiltered ({SESSIONS:,} sessions, 20 match)'
        )
        ratio = row['filtered_ratio']
        checks.append({'target': target, 'value': ratio, 'met': ratio >= TARGET_FILTERED_RATIO})
    return checks + erasure_targets(people)
