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
10 / 1,000 / 100,000 messages), memory per stored message at 1M messages, `--workers 2` against
one worker on redis, live (10,000 idle event streams, fan-out across replicas, a fork of 10,000
messages: `bench/live.py`), client (`memsvc.client` as the load generator against wrk: `bench/client.py`),
transfer (export and import of 1M messages: `bench/transfer.py`) and people (a filtered listing among 100,000
sessions, and an erasure of 10,000 sessions under get-last-20: `bench/people.py`, `bench/erasure.py`).
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.client import section_client
from bench.live import section_live
from bench.measure import (
    CONNECTIONS,
    CONTEXT_LEVELS,
    FULL_READ_LEVEL,
    GROWTH_LEVELS,
    GROWTH_SESSIONS,
    NATIVE,
    Run,
    Scenario,
    figures,
    growth_prefix,
    growth_scenario,
    main_scenarios,
    measure,
    measure_together,
    preload,
    stored_size,
    timed_run,
)
from bench.people import section_people
from bench.report import chart, cpu_ticks, machine, print_header, print_memory, print_rows, steal_percent, targets_met
from bench.servers import BENCH, LOAD_CPU, ROOT, SERVER_CPU, Server, running, start_ceiling, start_memsvc, start_redis
from bench.transfer import section_transfer
from tests.servers import RedisServer

RESULTS = BENCH / 'results'

READ_SESSIONS = 64
READ_SESSION_MESSAGES = 20
MEMORY_MESSAGES = 1_000_000
MEMORY_SESSION_MESSAGES = 100  # 1M messages as 10,000 sessions of 100: per-session costs are counted too
CHROMA_CONNECTIONS = 8
"""Chroma embeds every appended message on the server's core (~30 a second): at 64 connections a pair waited
longer than a whole run, and the backlog left by one scenario ran into the next."""
STORES = ('in_memory', 'redis')


def section_main(
    targets: Sequence[Server],
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    rounds: int,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Each scenario in its own rounds, but those compared with another (`measure.NATIVE`: the context window and
    the /v1 list with get-last-20, the /v1 pair with the native pair), which run in the same rounds as it, at the
    place of the first of them; the /v1 pair's group goes last (its pairs grow the sessions the reads read)."""
    results: dict[str, Any] = {}
    for group in _groups(scenarios):
        if len(group) == 1:
            measured = {group[0].name: measure(targets, group[0], rounds=rounds, seconds=args.seconds,
                                                warmup=args.warmup, connections=connections)}  # fmt: skip
        else:
            measured = measure_together(
                targets, group, rounds=rounds, seconds=args.seconds, warmup=args.warmup, connections=connections
            )
        for scenario in group:
            results[scenario.name] = {'label': scenario.label, **measured[scenario.name]}
            print_rows(scenario, results[scenario.name], targets)
        for scenario in group:
            if scenario.name in NATIVE and 'vs_native' in results[scenario.name][targets[-1].name]:
                ratios = ', '.join(
                    f'{server.name} {results[scenario.name][server.name]["vs_native"]:.2f}' for server in targets[1:]
                )
                print(f'  {scenario.name} / {NATIVE[scenario.name]}, req/s in the same rounds: {ratios}', flush=True)
    return results


def _groups(scenarios: Sequence[Scenario]) -> list[list[Scenario]]:
    """`scenarios` in runs of one, but each in `NATIVE` with its native one (when both are given)."""
    names = {s.name for s in scenarios}
    together = {name: native for name, native in NATIVE.items() if name in names and native in names}
    groups: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        key = together.get(scenario.name, scenario.name)
        groups.setdefault(key, []).append(scenario)
    ordered = sorted(groups.values(), key=lambda group: any(s.name == 'v1_pair' for s in group))
    return ordered


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
    for scenario_name, measured in out.items():
        one, two = measured['workers_1'], measured['workers_2']
        measured['measured_ratio'] = two['rps'] / one['rps']
        measured['cpu_ratio'] = one['cpu_us_per_request'] / two['cpu_us_per_request']
        measured['projected_ratio_with_own_cores'] = 2 * measured['cpu_ratio']
        print(
            f'  {scenario_name:<12} 1 worker: {one["rps"]:6.0f} req/s, {one["cpu_us_per_request"]:.0f} µs CPU/req;'
            f'  2 workers: {two["rps"]:6.0f} req/s, {two["cpu_us_per_request"]:.0f} µs CPU/req;'
            f'  measured x{measured["measured_ratio"]:.2f},'
            f' with cores of their own x{measured["projected_ratio_with_own_cores"]:.2f}'
        )
    return out


def _chroma_importable() -> str | None:
    """None when the chroma store can run, else why not."""
    if importlib.util.find_spec('chromadb') is None:
        return 'chromadb is not installed (pip install "memsvc[chroma]")'
    try:
        import memsvc.stores.chroma  # noqa: F401
    except Exception as exc:
        return f'memsvc.stores.chroma does not import yet: {type(exc).__name__}: {exc}'
    return None


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


SECTIONS = ('memory', 'main', 'growth', 'workers', 'live', 'client', 'transfer', 'people', 'chroma')


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
    """Append, get-last-20 and the context window (max_tokens 4000) on sessions that already hold 10 / 1,000 /
    100,000 messages. Reads are compared with their own at 1,000 too (`vs_full_window`): at 10 they answer the
    10 messages there are, from 1,000 on 20 (get-last-20) or the 68 that fit (the context window), so only that
    comparison is like for like.

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
    for op, levels in (('get_last_20', GROWTH_LEVELS), ('context', CONTEXT_LEVELS), ('append', GROWTH_LEVELS)):
        ceiling_runs: list[Run] = []
        mine: dict[tuple[int, str], list[Run]] = {(level, s.name): [] for level in levels for s in memsvcs}
        for n in range(runs):
            seconds = args.warmup if n == 0 else args.seconds
            ceiling_run = timed_run(ceiling, growth_scenario(op, levels[0], 0), seconds)
            for level in levels:
                for server in memsvcs:
                    sessions_of = n if op == 'append' else 0  # reads do not change their sessions
                    run = timed_run(server, growth_scenario(op, level, sessions_of), seconds)
                    if n > 0:
                        mine[level, server.name].append(run)
            if n > 0:
                ceiling_runs.append(ceiling_run)
        for level in levels:
            scenario = growth_scenario(op, level, 0)
            row = out[scenario.name] = {
                'label': scenario.label,
                ceiling.name: figures(ceiling_runs, ceiling_runs, args.seconds),
            }
            for server in memsvcs:
                runs_here, lowest = mine[level, server.name], mine[levels[0], server.name]
                row[server.name] = figures(runs_here, ceiling_runs, args.seconds)
                row[server.name]['vs_lowest'] = statistics.median(
                    r.rps / low.rps for r, low in zip(runs_here, lowest, strict=True)
                )
                if op != 'append':  # reads answer as much from 1,000 on as at 100,000: only the history differs
                    full = mine[FULL_READ_LEVEL, server.name]
                    row[server.name]['vs_full_window'] = statistics.median(
                        r.rps / low.rps for r, low in zip(runs_here, full, strict=True)
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
            if 'live' in sections:
                _flush(redis_server)
                results['live'] = section_live(workdir, redis_server, args.seconds, args.warmup)
            if 'client' in sections:
                results['client'] = section_client(workdir, args.seconds, args.warmup, args.rounds)
            if 'transfer' in sections:
                _flush(redis_server)
                results['transfer'] = section_transfer(workdir, redis_server)
            if 'people' in sections:
                _flush(redis_server)
                print("\npeople: one person's sessions among 100,000, and an erasure (in_memory, then redis)")
                results['people'] = section_people(workdir, redis_server, args.seconds, args.warmup)
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
    started, ticks = time.monotonic(), cpu_ticks()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_all(args, results)
    finally:  # what was measured is kept, also when a section failed
        results['seconds'] = time.monotonic() - started
        results['machine']['steal_percent'] = steal_percent(ticks, cpu_ticks())
        args.out.write_text(json.dumps(results, indent=2) + '\n')
    if results['machine']['steal_percent']:  # a VM's neighbours: a share of the cores this run did not get
        taken = ', '.join(f'cpu {cpu} {share:.0f} %' for cpu, share in results['machine']['steal_percent'].items())
        print(f'\nsteal time (the hypervisor ran other guests on our cores) during this run: {taken}')
    results['targets'] = targets_met(results)
    print('\ntargets (issues 5, 14, 15, 16, 17, 18)')
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
