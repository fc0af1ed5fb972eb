"""What `python -m bench` measures with: the scenarios (wrk Lua scripts in `bench/wrk/`), wrk runs and their
figures (medians over rounds, ratios to the ceiling's run of the same round), and loading sessions with
messages over HTTP."""

import asyncio
import dataclasses
import json
import math
import re
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench.servers import BENCH, LOAD_CPU, Server, pinned

WRK_SCRIPTS = BENCH / 'wrk'
API = '/api/v1/chat'
CONNECTIONS = 64
GROWTH_LEVELS = (10, 1_000, 100_000)
GROWTH_SESSIONS = 4
BATCH = 100
LAST_20 = '/sessions/{id}/messages?limit=20'
CONTEXT = '/sessions/{id}/context?max_tokens=4000'  # format=openai is the default
CONTEXT_LEVELS = GROWTH_LEVELS
FULL_READ_LEVEL = GROWTH_LEVELS[1]
"""The lowest level at which a read answers as much as at the highest: a session of 10 answers 10 messages, one of
1,000 or more 20 (get-last-20) or the 68 that fit 4,000 tokens (the context window). Flat with history is measured
against it, like for like."""
LIST_20 = '/sessions?limit=20&include_messages=false'  # the session records; their messages would dwarf them
V1_LIST_20 = '/conversations/{id}/items?limit=20&order=desc'  # as the SDKs ask, under api=/v1


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    script: str
    args: tuple[str, ...] = ()


def main_scenarios() -> list[Scenario]:
    return [
        Scenario('append', 'append one message', 'append.lua', ('prefix=append',)),
        Scenario('append_pair', 'append user+assistant pair', 'append_pair.lua', ('prefix=pair',)),
        Scenario('get_last_20', 'get last 20 messages', 'get.lua', ('prefix=read', f'path={LAST_20}')),
        Scenario('get_session', 'get session (20 messages)', 'get.lua', ('prefix=read', 'path=/sessions/{id}')),
        Scenario('context', 'context, max_tokens 4000, openai format', 'get.lua', ('prefix=read', f'path={CONTEXT}')),
        Scenario('create_session', 'create session', 'create_session.lua'),
        Scenario('list_sessions', 'list sessions (limit 20)', 'get.lua', (f'path={LIST_20}',)),
        # OpenAI's Conversations API on the same sessions, last: its pairs grow the read sessions
        Scenario('v1_list', '/v1 items, 20 newest', 'get.lua', ('api=/v1', 'prefix=read', f'path={V1_LIST_20}')),
        Scenario('v1_pair', '/v1 items create, a pair', 'v1_pair.lua', ('prefix=read',)),
    ]  # fmt: skip


def growth_scenario(op: str, level: int, run: int) -> Scenario:
    """`op` (get_last_20, context or append) on the sessions of `level` messages that `run` uses (see
    `section_growth`)."""
    common = (f'prefix={growth_prefix(level, run)}', f'sessions={GROWTH_SESSIONS}')
    if op == 'get_last_20':
        return Scenario(f'get_last_20@{level}', f'get last 20 @ {level:,}', 'get.lua', (*common, f'path={LAST_20}'))
    if op == 'context':
        label = f'context 4000 @ {level:,}'
        return Scenario(f'context@{level}', label, 'get.lua', (*common, f'path={CONTEXT}'))
    return Scenario(f'append@{level}', f'append one @ {level:,}', 'append.lua', common)


def growth_prefix(level: int, run: int) -> str:
    return f'growth{level}-{run}'


# --- wrk -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float = 0.0


def wrk(url: str, scenario: Scenario, seconds: int, *, cpus: str = LOAD_CPU, connections: int = CONNECTIONS) -> Run:
    argv = [
        'wrk', '-t1', f'-c{connections}', f'-d{seconds}s', '--timeout', '10s',
        '-s', str(WRK_SCRIPTS / scenario.script), url, '--', *scenario.args,
    ]  # fmt: skip
    done = subprocess.run(pinned(cpus, argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'wrk failed ({done.returncode}): {done.stdout}{done.stderr}')
    out = done.stdout
    found = re.search(r'^BENCH_JSON (.*)$', out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f'wrk printed no summary:\n{out}')
    data = json.loads(found.group(1))
    errors = sum(data[k] for k in ('connect_errors', 'read_errors', 'write_errors', 'timeouts', 'non_2xx'))
    return Run(
        rps=data['requests'] / (data['duration_us'] / 1e6),
        p50_ms=data['p50_us'] / 1000,
        p99_ms=data['p99_us'] / 1000,
        errors=errors,
    )


def measure(
    targets: Sequence[Server],
    scenario: Scenario,
    *,
    rounds: int,
    seconds: int,
    warmup: int,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Rounds of (ceiling, target, target, …); the first target is the ceiling. Returns the figures per target."""
    for server in targets:
        wrk(server.url, scenario, warmup, connections=connections)
    runs: dict[str, list[Run]] = {server.name: [] for server in targets}
    for _ in range(rounds):
        for server in targets:
            runs[server.name].append(timed_run(server, scenario, seconds, connections=connections))
    ceiling = runs[targets[0].name]
    return {server.name: figures(runs[server.name], ceiling, seconds) for server in targets}


NATIVE: dict[str, str] = {'context': 'get_last_20', 'v1_list': 'get_last_20', 'v1_pair': 'append_pair'}
"""The scenarios whose targets are a ratio to another scenario of the same store (issues 14 and 17): each is
measured in the same rounds as that one (`measure_together`), and the ratio is taken round by round."""


def measure_together(
    targets: Sequence[Server],
    scenarios: Sequence[Scenario],
    *,
    rounds: int,
    seconds: int,
    warmup: int,
    connections: int = CONNECTIONS,
) -> dict[str, dict[str, Any]]:
    """`measure` of several scenarios in the same rounds: each round runs every scenario on every target, so a
    machine that drifts (a shared VM's speed moves between minutes) moves them together. A scenario in `NATIVE`
    whose native one is among `scenarios` also gets `vs_native` per memsvc: the median over rounds of its req/s
    against the native scenario's in the same round."""
    for scenario in scenarios:
        for server in targets:
            wrk(server.url, scenario, warmup, connections=connections)
    runs: dict[tuple[str, str], list[Run]] = {(s.name, t.name): [] for s in scenarios for t in targets}
    for _ in range(rounds):
        for scenario in scenarios:
            for server in targets:
                runs[scenario.name, server.name].append(timed_run(server, scenario, seconds, connections=connections))
    out: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        ceiling = runs[scenario.name, targets[0].name]
        out[scenario.name] = {t.name: figures(runs[scenario.name, t.name], ceiling, seconds) for t in targets}
    names = {s.name for s in scenarios}
    for scenario in scenarios:
        native = NATIVE.get(scenario.name)
        if native not in names:
            continue
        for server in targets[1:]:
            pairs = zip(runs[scenario.name, server.name], runs[native, server.name], strict=True)
            ratio = statistics.median(mine.rps / base.rps for mine, base in pairs)
            out[scenario.name][server.name]['vs_native'] = ratio
    return out


def timed_run(server: Server, scenario: Scenario, seconds: int, *, connections: int = CONNECTIONS) -> Run:
    """One wrk run against `server`, with the server's CPU time during it."""
    before = server.cpu_seconds()
    run = wrk(server.url, scenario, seconds, connections=connections)
    run.cpu_s = server.cpu_seconds() - before
    return run


def figures(mine: list[Run], ceiling: list[Run], seconds: int) -> dict[str, Any]:
    """Medians over the rounds of one server's runs; ratios are taken against the ceiling's run of each round."""
    return {
        'rps': statistics.median(r.rps for r in mine),
        'p50_ms': statistics.median(r.p50_ms for r in mine),
        'p99_ms': statistics.median(r.p99_ms for r in mine),
        'ratio': statistics.median(r.rps / c.rps for r, c in zip(mine, ceiling, strict=True)),
        'cpu_us_per_request': _median([1e6 * r.cpu_s / (r.rps * seconds) for r in mine if r.rps > 0]),
        'cpu_ratio': _median(
            [(c.cpu_s / c.rps) / (r.cpu_s / r.rps) for r, c in zip(mine, ceiling, strict=True) if r.cpu_s and r.rps]
        ),
        'errors': sum(r.errors for r in mine),
        'rounds': [dataclasses.asdict(r) for r in mine],
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- loading data ----------------------------------------------------------------------------


def message(n: int) -> dict[str, str]:
    """A plausible chat message of 60 to 600 characters, alternating user and assistant."""
    words = ('the', 'report', 'budget', 'deadline', 'train', 'Berlin', 'summary', 'meeting', 'please', 'because')
    text = ' '.join(words[(n * 7 + i * 3) % len(words)] for i in range(10 + (n * 37) % 90))
    return {'role': 'user' if n % 2 == 0 else 'assistant', 'content': text}


async def load(url: str, sessions: Sequence[str], per_session: int, *, concurrency: int = 16) -> None:
    """Append `per_session` messages to each session, in batches of `BATCH`, `concurrency` requests at a time."""
    jobs: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for session in sessions:
        for start in range(0, per_session, BATCH):
            jobs.put_nowait((session, min(BATCH, per_session - start)))
    bodies = {size: json.dumps([message(n) for n in range(size)]).encode() for size in {BATCH, per_session % BATCH}}

    async def worker(client: aiohttp.ClientSession) -> None:
        while not jobs.empty():
            session, size = jobs.get_nowait()
            async with client.post(f'{url}{API}/sessions/{session}/messages', data=bodies[size],
                                   headers={'Content-Type': 'application/json'}) as reply:  # fmt: skip
                if reply.status != 201:
                    raise RuntimeError(f'loading {session}: {reply.status} {await reply.text()}')

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def preload(url: str, sessions: Sequence[str], per_session: int, *, concurrency: int = 16) -> float:
    started = time.monotonic()
    asyncio.run(load(url, sessions, per_session, concurrency=concurrency))
    return time.monotonic() - started


def stored_size(url: str, sessions: Sequence[str]) -> float:
    """Mean size in bytes of a stored message (as serialized, with its id and timestamp)."""
    total = count = 0
    for session in sessions:
        with urllib.request.urlopen(f'{url}{API}/sessions/{session}/messages', timeout=30) as reply:
            for item in json.loads(reply.read()):
                total += len(json.dumps(item, separators=(',', ':'), ensure_ascii=False).encode())
                count += 1
    return total / count
