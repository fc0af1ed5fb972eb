"""What `python -m bench` prints and writes: the tables, the targets of issue 5 with their figures, the chart
of throughput against history length, and the machine it ran on."""

import contextlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.client import client_targets
from bench.live import live_targets
from bench.measure import CONNECTIONS, FULL_READ_LEVEL, GROWTH_LEVELS, Scenario
from bench.people import people_targets
from bench.servers import Server
from bench.transfer import transfer_targets

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
    """The targets of issues 5, 14, 15, 16, 17 and 18 that this run measured, each with its figure and whether it is
    met."""
    checks = []
    for store, floor in (('memsvc-in_memory', 0.7), ('memsvc-redis', 0.45)):
        for name in ('append', 'get_last_20'):
            if name in results.get('main', {}):
                ratio = results['main'][name][store]['ratio']
                checks.append({'target': f'{store} {name} >= {floor} x ceiling', 'value': ratio, 'met': ratio >= floor})
    main = results.get('main', {})
    if 'context' in main and 'get_last_20' in main:  # issue 14
        for store in ('memsvc-in_memory', 'memsvc-redis'):
            ratio = _vs_native(main, 'context', 'get_last_20', store)
            target = f'{store} context (max_tokens 4000) >= 0.8 x get_last_20 (req/s, same rounds)'
            checks.append({'target': target, 'value': ratio, 'met': ratio >= 0.8})
    checks += _v1_targets(main)
    if 'growth' in results:
        low_level, high_level = GROWTH_LEVELS[0], GROWTH_LEVELS[-1]
        for store in ('memsvc-in_memory', 'memsvc-redis'):
            for op in ('append', 'get_last_20', 'context'):
                if f'{op}@{high_level}' not in results['growth']:
                    continue
                row = results['growth'][f'{op}@{high_level}'][store]
                ratio, base = (
                    (row['vs_full_window'], FULL_READ_LEVEL)
                    if 'vs_full_window' in row
                    else (row['vs_lowest'], low_level)
                )
                target = f'{store} {op} at {high_level:,} >= 0.9 x at {base:,} (req/s, same rounds)'
                if 'vs_full_window' in row:
                    target += f'; a read answers as much from {FULL_READ_LEVEL:,} on (x{row["vs_lowest"]:.2f} of 10)'
                checks.append({'target': target, 'value': ratio, 'met': ratio >= 0.9})
    for row in results.get('memory', []):
        target = f'memsvc-{row["store"]} memory <= {row["target_bytes_per_message"]:.0f} B/message'
        checks.append({'target': target, 'value': row['bytes_per_message'], 'met': row['met']})
    checks += live_targets(results.get('live', {}))
    checks += client_targets(results.get('client', {}))
    checks += transfer_targets(results.get('transfer', {}))
    checks += people_targets(results.get('people', {}))
    return checks


def _v1_targets(main: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17: OpenAI's Conversations API at 0.7 x the native route it translates to, in the same rounds."""
    checks = []
    for v1, native in (('v1_list', 'get_last_20'), ('v1_pair', 'append_pair')):
        if v1 in main and native in main:
            for store in ('memsvc-in_memory', 'memsvc-redis'):
                ratio = _vs_native(main, v1, native, store)
                target = f'{store} {v1} >= 0.7 x {native} (req/s, same rounds)'
                checks.append({'target': target, 'value': ratio, 'met': ratio >= 0.7})
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


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per cpu, from /proc/stat: (ticks the hypervisor gave to other guests, all ticks). Empty where unknown."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path('/proc/stat').read_text().splitlines():
            name, *fields = line.split()
            if name.startswith('cpu') and name != 'cpu' and len(fields) >= 8:
                ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
                out[name[3:]] = (ticks[7], sum(ticks))
    return out


def steal_percent(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """The share of each cpu's time that the hypervisor took (steal time) between two `cpu_ticks()`."""
    out = {}
    for cpu, (steal, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            out[cpu] = 100 * (steal - before[cpu][0]) / (total - before[cpu][1])
    return out


def _vs_native(main: dict[str, Any], name: str, native: str, store: str) -> float:
    """`name`'s req/s against `native`'s on `store`: round by round when they ran in the same rounds (`vs_native`),
    else the ratio of their medians (a results file of a run that measured them apart)."""
    row = main[name][store]
    return row['vs_native'] if 'vs_native' in row else row['rps'] / main[native][store]['rps']
