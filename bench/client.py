"""The `client` section of `python -m bench` (issue 18, "Speed"): `memsvc.client` as a gateway's load generator.

A gateway's turn is a read of the last 20 messages and an append of the user + assistant pair (with the
Idempotency-Key the client sends on every append). One process with 64 concurrent tasks, each turning over a
session of its own through one `AsyncMemsvcClient`, drives memsvc on `in_memory`; wrk drives the same server with
the same turn (`wrk/turn.lua`, 64 connections, a key on every append). Both are pinned to the load core, the
server to its own, in alternating rounds; the figure is the client's req/s against wrk's in the same round
(target: at least 0.8), and the client process's CPU time per call (user + system: what the client costs a
gateway per request, aiohttp included).

`python -m bench.client URL SECONDS` is the load generator itself; it prints one JSON line.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import Scenario, preload, wrk
from bench.servers import LOAD_CPU, ROOT, pinned, start_memsvc

TASKS = 64
PREFIX = 'turn'
TARGET_RATIO = 0.8
TURN = Scenario('turn', 'turn: get last 20 + append pair', 'turn.lua', (f'prefix={PREFIX}', f'sessions={TASKS}'))
PAIR: list[Any] = [
    {
        'role': 'user',
        'content': 'Can you summarise the three main points of the report I sent this morning, and list the '
        'deadlines it mentions?',
    },
    {
        'role': 'assistant',
        'content': 'Here are the three main points: first, revenue grew by twelve percent while costs stayed flat; '
        'second, the new product line ships in the spring; third, hiring is paused until the audit is complete. '
        'Deadlines: the budget review on March 3, the launch plan on March 17, and the audit report at the end of '
        'April.',
    },
]  # the bodies of wrk/turn.lua


async def drive(url: str, seconds: float) -> dict[str, float]:
    """`TASKS` tasks doing turns for `seconds`; requests answered, elapsed seconds, this process's CPU seconds."""
    from memsvc.client import AsyncMemsvcClient

    calls = 0
    async with AsyncMemsvcClient(url, connections=TASKS) as client:
        await client.get_messages(f'{PREFIX}-1', limit=20)  # the connection pool's first connection, outside the count
        stop = time.monotonic() + seconds

        async def turns(session_id: str) -> None:
            nonlocal calls
            while time.monotonic() < stop:
                await client.get_messages(session_id, limit=20)
                await client.append_many(session_id, PAIR)
                calls += 2

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(turns(f'{PREFIX}-{n}') for n in range(1, TASKS + 1)))
        return {'requests': calls, 'seconds': time.monotonic() - started, 'cpu_s': time.process_time() - cpu}


def client_run(url: str, seconds: int) -> dict[str, float]:
    argv = [sys.executable, '-m', 'bench.client', url, str(seconds)]
    done = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f'the client load failed ({done.returncode}): {done.stderr[-2000:]}')
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def section_client(workdir: Path, seconds: int, warmup: int, rounds: int) -> dict[str, Any]:
    print(f'\nthe client (memsvc.client, {TASKS} tasks in one process) against wrk, the same turn, in_memory')
    server = start_memsvc('in_memory', workdir, name='client-bench')
    try:
        preload(server.url, [f'{PREFIX}-{n}' for n in range(1, TASKS + 1)], 20)
        wrk(server.url, TURN, warmup)
        client_run(server.url, warmup)
        wrk_rps, client_rps, ratios, cpu_us = [], [], [], []
        for _ in range(rounds):
            by_wrk = wrk(server.url, TURN, seconds)
            by_client = client_run(server.url, seconds)
            rps = by_client['requests'] / by_client['seconds']
            wrk_rps.append(by_wrk.rps)
            client_rps.append(rps)
            ratios.append(rps / by_wrk.rps)
            cpu_us.append(1e6 * by_client['cpu_s'] / by_client['requests'])
            if by_wrk.errors:
                raise RuntimeError(f'wrk saw {by_wrk.errors} errors')
    finally:
        server.stop()
    out = {
        'wrk_rps': statistics.median(wrk_rps),
        'client_rps': statistics.median(client_rps),
        'ratio': statistics.median(ratios),
        'client_cpu_us_per_call': statistics.median(cpu_us),
        'rounds': [{'wrk_rps': w, 'client_rps': c} for w, c in zip(wrk_rps, client_rps, strict=True)],
    }
    print(
        f'  wrk {out["wrk_rps"]:,.0f} req/s, client {out["client_rps"]:,.0f} req/s: x{out["ratio"]:.2f} '
        f'(median of {rounds} rounds); the client costs {out["client_cpu_us_per_call"]:.0f} µs of CPU per call'
    )
    return out


def client_targets(client: dict[str, Any]) -> list[dict[str, Any]]:
    if 'ratio' not in client:
        return []
    target = f'client turn (64 tasks, one process) >= {TARGET_RATIO} x wrk turn, in_memory'
    return [{'target': target, 'value': client['ratio'], 'met': client['ratio'] >= TARGET_RATIO}]


def main() -> None:
    try:
        import uvloop
    except ImportError:  # Windows: the default loop
        uvloop = None
    url, seconds = sys.argv[1], float(sys.argv[2])
    runner = uvloop.run if uvloop is not None else asyncio.run
    print(json.dumps(runner(drive(url, seconds))))


if __name__ == '__main__':
    main()
