"""`python -m bench`: memsvc against a bare-aiohttp ceiling, in one run, on this machine.

What it starts (all on loopback, free ports, stopped at the end):

- the ceiling (`bench/ceiling.py`), memsvc on `in_memory` and memsvc on `redis` (through the real CLI,
  `python -m memsvc serve`, so with the same event loop as production), each pinned to the server core;
- a `redis-server` of its own (no persistence), pinned to the load core next to wrk;
- memsvc on `chroma`, in a table of its own, when `chromadb` and `memsvc.stores.chroma` import.

wrk (pinned to the load core, 64 connections, one thread) drives every scenario in rounds of
ceiling, memsvc/in_memory, memsvc/redis, ceiling, … so a machine that drifts moves all of them; the
ratio to the ceiling is taken within each round and the median over rounds is reported, with the
median req/s, p50 and p99. Results go to `bench/results/` as JSON and as a PNG chart.

Sections: the scenarios of a chat turn, growth (append and get-last-20 on sessions that already hold
10 / 1,000 / 100,000 messages), memory per stored message at 1M messages, and `--workers 2` against
one worker on redis.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers import RedisServer, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / 'results'
WRK_SCRIPTS = BENCH / 'wrk'
API = '/api/v1/chat'
CONNECTIONS = 64
SERVER_CPU = '0'
LOAD_CPU = '1'
READ_SESSIONS = 64
READ_SESSION_MESSAGES = 20
GROWTH_LEVELS = (10, 1_000, 100_000)
GROWTH_SESSIONS = 4
MEMORY_MESSAGES = 1_000_000
MEMORY_SESSION_MESSAGES = 100  # 1M messages as 10,000 sessions of 100: per-session costs are counted too
BATCH = 100
CHROMA_CONNECTIONS = 8
"""Chroma embeds every appended message on the server's core (~30 a second): at 64 connections a pair waited
longer than a whole run, and the backlog left by one scenario ran into the next."""
STORES = ('in_memory', 'redis')
LAST_20 = '/sessions/{id}/messages?limit=20'
LIST_20 = '/sessions?limit=20&include_messages=false'  # the session records; their messages would dwarf them


# --- scenarios -------------------------------------------------------------------------------


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
        Scenario('create_session', 'create session', 'create_session.lua'),
        Scenario('list_sessions', 'list sessions (limit 20)', 'get.lua', (f'path={LIST_20}',)),
    ]  # fmt: skip


def growth_scenario(op: str, level: int, run: int) -> Scenario:
    """`op` (get_last_20 or append) on the sessions of `level` messages that `run` uses (see `section_growth`)."""
    common = (f'prefix={growth_prefix(level, run)}', f'sessions={GROWTH_SESSIONS}')
    if op == 'get_last_20':
        return Scenario(f'get_last_20@{level}', f'get last 20 @ {level:,}', 'get.lua', (*common, f'path={LAST_20}'))
    return Scenario(f'append@{level}', f'append one @ {level:,}', 'append.lua', common)


def growth_prefix(level: int, run: int) -> str:
    return f'growth{level}-{run}'


# --- processes -------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_bytes(self) -> int:
        return _rss_bytes(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and every process below it (workers)."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))


def _rss_bytes(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'no VmRSS for {pid}')


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _tree(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f'/proc/{pid}/task/{pid}/children').read_text().split():
            out += _tree(int(child))
    return out


def _pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ['taskset', '-c', cpus, *argv]


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    workdir: Path,
    cpus: str = SERVER_CPU,
    ready_path: str = '/healthz',
    timeout: float = 60.0,
    root: Path = ROOT,
) -> Server:
    """Start `argv` (which takes `--port`) in `root`, pinned to `cpus`; return once `ready_path` answers 200."""
    port = free_port()
    log = workdir / f'{name}.log'
    process = subprocess.Popen(
        _pinned(cpus, [*argv, '--port', str(port)]),
        cwd=root,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=log.open('wb'),
        stderr=subprocess.STDOUT,
    )
    server = Server(name, port, process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f'{name} exited at start ({process.returncode}): {log.read_text()[-2000:]}')
        with contextlib.suppress(OSError), urllib.request.urlopen(server.url + ready_path, timeout=2) as reply:
            if reply.status == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f'{name} did not answer {ready_path} within {timeout:.0f} s: {log.read_text()[-2000:]}')
        time.sleep(0.1)


def start_memsvc(
    store: str,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    workers: int = 1,
    cpus: str = SERVER_CPU,
    timeout: float = 60.0,
    root: Path = ROOT,
    name: str = 'memsvc',
) -> Server:
    """`python -m memsvc serve` (the real command line, so the same event loop as production) from `root`."""
    argv = [sys.executable, '-m', 'memsvc', 'serve', '--memory-type', store, '--workers', str(workers)]
    name = f'{name}-{store}' + (f'-w{workers}' if workers > 1 else '')
    full_env = {'MEMSVC_LOG_LEVEL': 'WARNING', 'MEMSVC_KEY_PREFIX': f'bench-{name}', **(env or {})}
    return start_server(
        name, argv, env=full_env, workdir=workdir, cpus=cpus, ready_path='/readyz', timeout=timeout, root=root
    )


def start_ceiling(workdir: Path) -> Server:
    return start_server('ceiling', [sys.executable, '-m', 'bench.ceiling'], env={}, workdir=workdir)


def start_redis(workdir: Path) -> RedisServer:
    """A redis-server of our own, without persistence (the bench measures memsvc, not the disk)."""
    server = RedisServer.start(workdir / 'redis', extra_args=['--appendonly', 'no', '--save', ''])
    assert server.process is not None
    subprocess.run(['taskset', '-pc', LOAD_CPU, str(server.process.pid)], check=True, capture_output=True)
    return server


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
    done = subprocess.run(_pinned(cpus, argv), capture_output=True, text=True)
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


# --- sections --------------------------------------------------------------------------------


def section_main(
    targets: Sequence[Server],
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    rounds: int,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in scenarios:
        figures = measure(
            targets, scenario, rounds=rounds, seconds=args.seconds, warmup=args.warmup, connections=connections
        )
        results[scenario.name] = {'label': scenario.label, **figures}
        print_rows(scenario, results[scenario.name], targets)
    return results


def section_memory(store: str, workdir: Path, redis_server: RedisServer | None) -> dict[str, Any]:
    """Load `MEMORY_MESSAGES` into a fresh memsvc and compare the memory it took with the serialized size."""
    env = {'REDIS_URL': redis_server.url} if redis_server is not None else {}
    server = start_memsvc(store, workdir, env={**env, 'MEMSVC_KEY_PREFIX': 'benchmem'})
    try:
        preload(server.url, ['warmup'], 1000)  # first-use allocations are not per message
        sessions = [f'mem-{n}' for n in range(MEMORY_MESSAGES // MEMORY_SESSION_MESSAGES)]
        before = _redis_used(redis_server) if redis_server is not None else server.rss_bytes()
        seconds = preload(server.url, sessions, MEMORY_SESSION_MESSAGES)
        after = _redis_used(redis_server) if redis_server is not None else server.rss_bytes()
        serialized = stored_size(server.url, sessions[:: len(sessions) // 50])
    finally:
        server.stop()
    per_message = (after - before) / MEMORY_MESSAGES
    if store == 'redis':
        limit, measure_name = serialized + 64, 'used_memory delta'
    else:
        limit, measure_name = 1.5 * serialized + 100, 'RSS delta'
    return {
        'store': store,
        'messages': MEMORY_MESSAGES,
        'sessions': len(sessions),
        'measure': measure_name,
        'bytes_per_message': per_message,
        'serialized_bytes_per_message': serialized,
        'overhead_bytes_per_message': per_message - serialized,
        'target_bytes_per_message': limit,
        'met': per_message <= limit,
        'load_seconds': seconds,
    }


def _flush(server: RedisServer) -> None:
    with server.client() as client:
        client.flushall()


def _redis_used(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.info('memory')['used_memory'])


def section_workers(workdir: Path, redis_server: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    """`--workers 2` against one worker on redis. Here the load generator and Redis share the two cores with
    the workers, so beside the raw req/s this reports memsvc's CPU time per request in both runs: with cores
    of their own for wrk and Redis, N workers serve N / (CPU per request) requests per second."""
    env = {'REDIS_URL': redis_server.url}
    out: dict[str, Any] = {}
    scenarios = [s for s in main_scenarios() if s.name in ('append', 'get_last_20')]
    for workers, cpus in ((1, SERVER_CPU), (2, f'{SERVER_CPU},{LOAD_CPU}')):
        server = start_memsvc('redis', workdir, env=env, workers=workers, cpus=cpus)
        try:
            preload(server.url, [f'read-{n}' for n in range(1, READ_SESSIONS + 1)], READ_SESSION_MESSAGES)
            for scenario in scenarios:
                # wrk and Redis stay on the load core; with two workers the server has both cores
                result = measure([server], scenario, rounds=args.rounds, seconds=args.seconds, warmup=args.warmup)
                out.setdefault(scenario.name, {})[f'workers_{workers}'] = result[server.name]
        finally:
            server.stop()
    for scenario_name, figures in out.items():
        one, two = figures['workers_1'], figures['workers_2']
        figures['measured_ratio'] = two['rps'] / one['rps']
        figures['cpu_ratio'] = one['cpu_us_per_request'] / two['cpu_us_per_request']
        figures['projected_ratio_with_own_cores'] = 2 * figures['cpu_ratio']
        print(
            f'  {scenario_name:<12} 1 worker: {one["rps"]:6.0f} req/s, {one["cpu_us_per_request"]:.0f} µs CPU/req;'
            f'  2 workers: {two["rps"]:6.0f} req/s, {two["cpu_us_per_request"]:.0f} µs CPU/req;'
            f'  measured x{figures["measured_ratio"]:.2f},'
            f' with cores of their own x{figures["projected_ratio_with_own_cores"]:.2f}'
        )
    return out


# --- output ----------------------------------------------------------------------------------

COLUMNS = (
    f'  {"scenario":<28} {"server":<17} {"req/s":>7} {"p50 ms":>7} {"p99 ms":>7}'
    f' {"x ceil":>6} {"CPU µs":>6} {"x CPU":>6}'
)


def print_header(title: str, *, growth: bool = False) -> None:
    print(f'\n{title}\n{COLUMNS} errors' + (f' x @{GROWTH_LEVELS[0]}' if growth else ''))


def print_rows(scenario: Scenario, figures: dict[str, Any], targets: Sequence[Server], *, growth: bool = False) -> None:
    """One line per server: median req/s, p50, p99, ratio to the ceiling by req/s, CPU µs per request, and
    the ratio of CPU per request (ceiling / memsvc: what the ratio would be with the server core saturated);
    in the growth table also the req/s against the same server's at the lowest level, round by round."""
    for n, server in enumerate(targets):
        row = figures[server.name]
        label = scenario.label if n == 0 else ''
        ratio = '' if n == 0 else f'{row["ratio"]:.2f}'
        cpu_ratio = '' if n == 0 else f'{row["cpu_ratio"]:.2f}'
        vs_lowest = f' {row["vs_lowest"]:6.2f}' if growth and 'vs_lowest' in row else ''
        print(
            f'  {label:<28} {server.name:<17} {row["rps"]:7.0f} {row["p50_ms"]:7.2f} {row["p99_ms"]:7.2f} '
            f'{ratio:>6} {row["cpu_us_per_request"]:6.0f} {cpu_ratio:>6} {row["errors"]:>6}{vs_lowest}',
            flush=True,
        )


def print_memory(row: dict[str, Any]) -> None:
    print(
        f'  {row["store"]:<10} {row["bytes_per_message"]:6.1f} B/message ({row["measure"]}); serialized '
        f'{row["serialized_bytes_per_message"]:.1f} B, so {row["overhead_bytes_per_message"]:.1f} B over it; '
        f'target <= {row["target_bytes_per_message"]:.0f} B: {"met" if row["met"] else "NOT met"}',
        flush=True,
    )


def targets_met(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 5 that this run measured, each with its figure and whether it is met."""
    checks = []
    for store, floor in (('memsvc-in_memory', 0.7), ('memsvc-redis', 0.45)):
        for name in ('append', 'get_last_20'):
            if name in results.get('main', {}):
                ratio = results['main'][name][store]['ratio']
                checks.append({'target': f'{store} {name} >= {floor} x ceiling', 'value': ratio, 'met': ratio >= floor})
    if 'growth' in results:
        low_level, high_level = GROWTH_LEVELS[0], GROWTH_LEVELS[-1]
        for store in ('memsvc-in_memory', 'memsvc-redis'):
            for op in ('append', 'get_last_20'):
                ratio = results['growth'][f'{op}@{high_level}'][store]['vs_lowest']
                target = f'{store} {op} at {high_level:,} >= 0.9 x at {low_level} (req/s, same rounds)'
                checks.append({'target': target, 'value': ratio, 'met': ratio >= 0.9})
    for row in results.get('memory', []):
        target = f'memsvc-{row["store"]} memory <= {row["target_bytes_per_message"]:.0f} B/message'
        checks.append({'target': target, 'value': row['bytes_per_message'], 'met': row['met']})
    return checks


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput against history length, one line per store, for append and get-last-20."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, op, title in zip(axes, ('append', 'get_last_20'), ('append one message', 'get last 20'), strict=True):
        for server in ('ceiling', 'memsvc-in_memory', 'memsvc-redis'):
            ys = [results['growth'][f'{op}@{level}'][server]['rps'] for level in GROWTH_LEVELS]
            ax.plot(GROWTH_LEVELS, ys, marker='o', label=server, linestyle='--' if server == 'ceiling' else '-')
        ax.set_xscale('log')
        ax.set_xlabel('messages already in the session')
        ax.set_ylabel(f'req/s ({CONNECTIONS} connections, server on one core)')
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    load = results['machine']['load_average_at_start'][0]
    fig.suptitle(f'memsvc, throughput against history length; {results["machine"]["cpu"]}, load {load:.1f}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'python': platform.python_version(),
        'kernel': platform.release(),
        'load_average_at_start': os.getloadavg(),
    }


# --- main ------------------------------------------------------------------------------------


def _chroma_importable() -> str | None:
    """None when the chroma store can run, else why not."""
    if importlib.util.find_spec('chromadb') is None:
        return 'chromadb is not installed (pip install "memsvc[chroma]")'
    try:
        import memsvc.stores.chroma  # noqa: F401
    except Exception as exc:
        return f'memsvc.stores.chroma does not import yet: {type(exc).__name__}: {exc}'
    return None


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m bench', description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--seconds', type=int, default=5, help='wrk duration of one measurement (whole seconds)')
    parser.add_argument('--warmup', type=int, default=1, help='wrk warm-up per server and scenario (whole seconds)')
    parser.add_argument('--rounds', type=int, default=3, help='rounds of (ceiling, memsvc, ...) per scenario')
    parser.add_argument('--growth-rounds', type=int, default=2, help='rounds per growth scenario')
    parser.add_argument(
        '--sections', default=','.join(SECTIONS), help=f'comma-separated subset of {",".join(SECTIONS)}'
    )
    parser.add_argument('--only', default='', help='main scenarios to run (comma-separated names); default all')
    parser.add_argument('--out', type=Path, default=RESULTS / 'latest.json', help='where to write the JSON')
    parser.add_argument(
        '--baseline',
        type=Path,
        help='also run memsvc from this checkout (e.g. a `git worktree` of an older commit) in the same rounds, '
        'as base-in_memory and base-redis: an A/B comparison that a drifting machine moves together',
    )
    return parser.parse_args(argv)


SECTIONS = ('memory', 'main', 'growth', 'workers', 'chroma')


def run_throughput(workdir: Path, redis_server: RedisServer, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The chat-turn scenarios and growth, on the ceiling, memsvc/in_memory and memsvc/redis started once."""
    sections = set(args.sections.split(','))
    redis_env = {'REDIS_URL': redis_server.url}
    servers = [
        start_ceiling(workdir),
        start_memsvc('in_memory', workdir),
        start_memsvc('redis', workdir, env=redis_env),
    ]
    if args.baseline is not None:  # the same again from another checkout, in the same rounds
        servers.append(start_memsvc('in_memory', workdir, root=args.baseline, name='base'))
        servers.append(start_memsvc('redis', workdir, env=redis_env, root=args.baseline, name='base'))
    with running(servers) as targets:
        for server in targets[1:]:
            preload(server.url, [f'read-{n}' for n in range(1, READ_SESSIONS + 1)], READ_SESSION_MESSAGES)
        if 'main' in sections:
            scenarios = [s for s in main_scenarios() if not args.only or s.name in args.only.split(',')]
            print_header('the scenarios of a chat turn (median over rounds)')
            results['main'] = section_main(targets, scenarios, args, args.rounds)
        if 'growth' in sections:
            results['growth'] = section_growth(targets, args)


def section_growth(targets: Sequence[Server], args: argparse.Namespace) -> dict[str, Any]:
    """Append and get-last-20 on sessions that already hold 10 / 1,000 / 100,000 messages.

    All levels are measured in the same rounds (the ceiling, then every memsvc at every level), and each
    level's throughput is compared with the lowest level's of the same round: the machine's speed moves
    between minutes, and the ratio to the ceiling moves with it (memsvc gains less than the ceiling when
    the machine is fast), so levels measured one after the other differed by up to 0.15 in ratio although a
    side-by-side run showed no difference. Each append run writes to sessions of its own, loaded to the
    level: a run appends thousands of messages, which would leave the next run's sessions of 10 far longer.
    """
    runs = 1 + args.growth_rounds  # a warm-up run and the rounds; run 0 is also the reads' sessions
    for server in targets[1:]:
        for level in GROWTH_LEVELS:
            preload(server.url, [f'{growth_prefix(level, run)}-{n + 1}' for run in range(runs)
                                 for n in range(GROWTH_SESSIONS)], level)  # fmt: skip
    ceiling, memsvcs = targets[0], targets[1:]
    print_header('growth: sessions that already hold N messages (all levels in the same rounds)', growth=True)
    out: dict[str, Any] = {}
    for op in ('get_last_20', 'append'):
        ceiling_runs: list[Run] = []
        mine: dict[tuple[int, str], list[Run]] = {(level, s.name): [] for level in GROWTH_LEVELS for s in memsvcs}
        for n in range(runs):
            seconds = args.warmup if n == 0 else args.seconds
            ceiling_run = timed_run(ceiling, growth_scenario(op, GROWTH_LEVELS[0], 0), seconds)
            for level in GROWTH_LEVELS:
                for server in memsvcs:
                    sessions_of = 0 if op == 'get_last_20' else n  # reads do not change their sessions
                    run = timed_run(server, growth_scenario(op, level, sessions_of), seconds)
                    if n > 0:
                        mine[level, server.name].append(run)
            if n > 0:
                ceiling_runs.append(ceiling_run)
        for level in GROWTH_LEVELS:
            scenario = growth_scenario(op, level, 0)
            row = out[scenario.name] = {
                'label': scenario.label,
                ceiling.name: figures(ceiling_runs, ceiling_runs, args.seconds),
            }
            for server in memsvcs:
                runs_here, lowest = mine[level, server.name], mine[GROWTH_LEVELS[0], server.name]
                row[server.name] = figures(runs_here, ceiling_runs, args.seconds)
                row[server.name]['vs_lowest'] = statistics.median(
                    r.rps / low.rps for r, low in zip(runs_here, lowest, strict=True)
                )
            print_rows(scenario, row, targets, growth=True)
    return out


def run_all(args: argparse.Namespace, results: dict[str, Any]) -> None:
    sections = set(args.sections.split(','))
    with tempfile.TemporaryDirectory(prefix='memsvc-bench-') as tmp:
        workdir = Path(tmp)
        redis_server = start_redis(workdir)
        try:
            if 'memory' in sections:
                print(
                    f'\nmemory per stored message at {MEMORY_MESSAGES:,} messages'
                    f' (sessions of {MEMORY_SESSION_MESSAGES})'
                )
                results['memory'] = []
                for store in STORES:
                    results['memory'].append(section_memory(store, workdir, redis_server if store == 'redis' else None))
                    print_memory(results['memory'][-1])
                _flush(redis_server)
            if sections & {'main', 'growth'}:
                run_throughput(workdir, redis_server, args, results)
            if 'workers' in sections:
                print(
                    '\n--workers 2 against 1 on redis'
                    ' (1 worker: cpu 0; 2 workers: cpus 0 and 1, shared with wrk and redis)'
                )
                _flush(redis_server)
                results['workers'] = section_workers(workdir, redis_server, args)
        finally:
            redis_server.stop(kill=True)
        if 'chroma' in sections:
            results['chroma'] = section_chroma(workdir, args)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for tool in ('wrk', 'taskset', 'redis-server'):
        if shutil.which(tool) is None:
            sys.exit(f'bench: {tool} is not on PATH (make bench installs wrk and redis-server)')
    if (os.cpu_count() or 1) < 2:
        sys.exit('bench: needs two cores, one for the server and one for the load generator')
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this runner loads data; it stays off the server core
    results: dict[str, Any] = {'started': datetime.now(UTC).isoformat(timespec='seconds'), 'machine': machine()}
    results['method'] = {
        'connections': CONNECTIONS,
        'seconds': args.seconds,
        'warmup': args.warmup,
        'rounds': args.rounds,
        'growth_rounds': args.growth_rounds,
        'server_cpu': SERVER_CPU,
        'load_cpu': LOAD_CPU,
        'redis_cpu': LOAD_CPU,
    }
    print(
        f'memsvc bench on {results["machine"]["cpu"]} ({results["machine"]["cores"]} cores), load average '
        f'{results["machine"]["load_average_at_start"][0]:.2f}; server on cpu {SERVER_CPU}, wrk and redis-server on '
        f'cpu {LOAD_CPU}; {CONNECTIONS} connections, {args.seconds} s per run'
    )
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_all(args, results)
    finally:  # what was measured is kept, also when a section failed
        results['seconds'] = time.monotonic() - started
        args.out.write_text(json.dumps(results, indent=2) + '\n')
    results['targets'] = targets_met(results)
    print('\ntargets (issue 5)')
    for check in results['targets']:
        print(f'  {"met    " if check["met"] else "NOT met"}  {check["target"]}: {check["value"]:.2f}')
    args.out.write_text(json.dumps(results, indent=2) + '\n')
    print(f'\nresults: {_shown(args.out)}', end='')
    if 'growth' in results:
        chart(results, args.out.with_suffix('.png'))
        print(f', chart: {_shown(args.out.with_suffix(".png"))}', end='')
    print(f' ({results["seconds"] / 60:.1f} min)')


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def section_chroma(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    print('\nchroma (embedded, ephemeral; one round; every append embeds its message)')
    reason = _chroma_importable()
    if reason is None:
        try:
            chroma = start_memsvc('chroma', workdir, timeout=300)
        except RuntimeError as exc:
            reason = f'memsvc does not start on chroma: {exc}'
    if reason is not None:
        print(f'  not measured: {reason}')
        return {'skipped': reason}
    with running([start_ceiling(workdir), chroma]) as targets:
        try:
            # Every message is embedded on the server's one core: load two batches at a time, so that
            # none waits past the store deadline behind the others.
            sessions = [f'read-{n}' for n in range(1, READ_SESSIONS + 1)]
            preload(chroma.url, sessions, READ_SESSION_MESSAGES, concurrency=2)
            print_header(f'chroma: the scenarios of a chat turn ({CHROMA_CONNECTIONS} connections)')
            return section_main(targets, main_scenarios(), args, rounds=1, connections=CHROMA_CONNECTIONS)
        except Exception as exc:  # the other tables stand without this one
            print(f'  failed: {type(exc).__name__}: {exc}')
            return {'failed': str(exc)}


if __name__ == '__main__':
    main()
