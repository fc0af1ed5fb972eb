"""The `live` section of `python -m bench` (issue 15, "Speed and scale"): open event streams at scale.

- **Idle streams**: 10,000 open `GET …/sessions/{id}/events` on one `memsvc serve` (in_memory, then redis): the
  server's RSS before and after opening them, per stream; and get-last-20 req/s (wrk) on that process while
  they are open against a twin process without them, in alternating rounds (and once before they opened, to
  show what the twins differ by on their own).
- **Fan-out**: two replicas on one Redis, 1,000 streams on replica B on one session, appends through replica A:
  per stream, the time from the append's send to the stream's receipt of its event (p50 and p99 over all the
  appends' deliveries). The receiving client is one Python process on the load core that reads all 1,000
  sockets in its event loop's own callbacks (`_Stream`), so its turn through them is in the figure, but no task
  per stream is. One append goes before those measured: the 1,000 streams, opened within a second or two,
  leave their objects in the cyclic collector's middle generation, and in about half the runs the first
  append's allocations set off its collection, 30-130 ms of replica B on this VM (seen with `gc.callbacks`),
  during which none of its 1,000 deliveries went out: the cost of opening them all at once, not of a fan-out.
- **Fork**: `POST …/fork` of a session of 10,000 messages on redis (include_messages=false), median of a few.

Every connection is on 127.0.0.1; the counts are fixed and every wait has a deadline.
"""

import asyncio
import contextlib
import json
import resource
import statistics
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.measure import API, Run, Scenario, main_scenarios, message, preload, timed_run
from bench.servers import Server, start_memsvc
from tests.servers import RedisServer

IDLE_STREAMS = 10_000
IDLE_SESSIONS = 100  # 100 streams on each
IDLE_ROUNDS = 3
FANOUT_STREAMS = 1_000
FANOUT_APPENDS = 20
FORK_MESSAGES = 10_000
FORK_RUNS = 5
OPEN_AT_ONCE = 100
DEADLINE = 120.0
"""Seconds for opening all the streams, and for one append to reach all of them."""

TARGET_BYTES_PER_STREAM = 20 * 1024
TARGET_RPS_RATIO = 0.9
TARGET_FANOUT_P99_MS = 100.0
TARGET_FORK_MS = 100.0

READ_SESSIONS = 64
READ_SESSION_MESSAGES = 20


def raise_fd_limit(wanted: int) -> None:
    """This process's descriptor limit up to `wanted` (at most the hard limit): it holds every stream's socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raise RuntimeError(f'bench live: needs {wanted} descriptors, the limit is {soft} (ulimit -Hn)')


def _stream_env(streams: int) -> dict[str, str]:
    """Room for the streams plus wrk's connections and a few more; and a head timeout past the time that thousands
    of connections opened at once can wait in the accept queue of a busy server (the default 5 s closed some
    before their request was read: this measures idle streams, not slow clients)."""
    return {
        'MEMSVC_MAX_STREAMS': str(streams + 100),
        'MEMSVC_MAX_CONNECTIONS': str(streams + 300),
        'MEMSVC_HEADER_TIMEOUT_SECONDS': '60',
    }


class Streams:
    """Event streams held open by an event loop in a thread of its own, while this thread runs wrk."""

    def __init__(self, port: int, paths: Sequence[str]) -> None:
        self.port, self.paths = port, paths
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = DEADLINE) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self) -> float:
        started = time.monotonic()
        self.call(self._open_all())
        return time.monotonic() - started

    async def _open_all(self) -> None:
        gate = asyncio.Semaphore(OPEN_AT_ONCE)

        async def one(path: str) -> None:
            async with gate:
                reader, writer = await asyncio.open_connection('127.0.0.1', self.port)
                writer.write(f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.encode())
                head = await reader.readuntil(b'\r\n\r\n')
                if not head.startswith(b'HTTP/1.1 200'):
                    writer.close()
                    raise RuntimeError(f'stream {path}: {head.decode(errors="replace")[:200]}')
                self.readers.append(reader)
                self.writers.append(writer)

        outcomes = await asyncio.gather(*(one(path) for path in self.paths), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise RuntimeError(f'{len(failed)} of {len(self.paths)} streams did not open, e.g.: {failed[0]!r}')

    def close(self) -> None:
        async def close_all() -> None:
            for writer in self.writers:
                writer.close()
            self.writers.clear()
            self.readers.clear()

        with contextlib.suppress(Exception):
            self.call(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


def _events_path(session: str) -> str:
    return f'{API}/sessions/{session}/events'


def _get_last_20() -> Scenario:
    return next(s for s in main_scenarios() if s.name == 'get_last_20')


def _settle(server: Server) -> int:
    """The server's RSS once it stops moving (a few samples), so that lazily touched pages are counted."""
    rss = server.rss_bytes()
    for _ in range(10):
        time.sleep(0.3)
        now = server.rss_bytes()
        if abs(now - rss) < 64 * 1024:
            return now
        rss = now
    return rss


def _quiet(server: Server, deadline: float = 60.0) -> None:
    """Until the server spends under a tenth of its core (it has finished with the streams just closed)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        before = server.cpu_seconds()
        time.sleep(0.5)
        if server.cpu_seconds() - before < 0.05:
            return


def idle_streams(store: str, workdir: Path, env: dict[str, str], seconds: int, warmup: int) -> dict[str, Any]:
    """Memory per idle stream, and get-last-20 on the process that holds `IDLE_STREAMS` of them against a twin
    process without streams (same store, same data, same core), in alternating rounds: on a busy machine
    runs minutes apart on one process differed by 2x, rounds side by side move together."""
    common = {**env, **_stream_env(IDLE_STREAMS)}
    server = start_memsvc(store, workdir, env={**common, 'MEMSVC_KEY_PREFIX': 'benchlive'}, name='streams')
    twin = start_memsvc(store, workdir, env={**common, 'MEMSVC_KEY_PREFIX': 'benchtwin'}, name='twin')
    try:
        sessions = [f'live-{n}' for n in range(IDLE_SESSIONS)]
        for target in (server, twin):
            preload(target.url, [f'read-{n}' for n in range(1, READ_SESSIONS + 1)], READ_SESSION_MESSAGES)
            preload(target.url, sessions, 1)
        scenario = _get_last_20()
        for target in (twin, server):
            timed_run(target, scenario, warmup)  # first-use allocations come before `before`
        twins_before = timed_run(server, scenario, seconds).rps / timed_run(twin, scenario, seconds).rps
        before = _settle(server)
        streams = Streams(server.port, [_events_path(sessions[n % IDLE_SESSIONS]) for n in range(IDLE_STREAMS)])
        try:
            open_seconds = streams.open()
            _quiet(server)
            after = _settle(server)
            timed_run(server, scenario, warmup)
            with_streams: list[Run] = []
            without: list[Run] = []
            for _ in range(IDLE_ROUNDS):
                without.append(timed_run(twin, scenario, seconds))
                with_streams.append(timed_run(server, scenario, seconds))
            alive = server.process.poll() is None
        finally:
            streams.close()
    finally:
        server.stop()
        twin.stop()
    per_stream = (after - before) / IDLE_STREAMS
    ratio = statistics.median(w.rps / o.rps for w, o in zip(with_streams, without, strict=True))
    return {
        'store': store,
        'streams': IDLE_STREAMS,
        'open_seconds': open_seconds,
        'rss_before': before,
        'rss_after': after,
        'bytes_per_stream': per_stream,
        'target_bytes_per_stream': TARGET_BYTES_PER_STREAM,
        'memory_met': per_stream <= TARGET_BYTES_PER_STREAM,
        'twins_ratio_before_streams': twins_before,
        'rps_without': [r.rps for r in without],
        'rps_with': [r.rps for r in with_streams],
        'p99_ms_with': [r.p99_ms for r in with_streams],
        'errors_with': sum(r.errors for r in with_streams),
        'rps_ratio': ratio,
        'target_rps_ratio': TARGET_RPS_RATIO,
        'rps_met': ratio >= TARGET_RPS_RATIO,
        'server_alive': alive,
    }


class _Arrivals:
    """One append's deliveries: the time each stream's event arrived, and a future done when all have."""

    def __init__(self, marker: bytes, expected: int) -> None:
        self.marker, self.expected = marker, expected
        self.times: list[float] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def arrived(self, at: float) -> None:
        self.times.append(at)
        if len(self.times) == self.expected and not self.done.done():
            self.done.set_result(None)

    def failed(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class _Stream(asyncio.Protocol):
    """One event stream, read by the event loop's own callback: the time an event arrives is taken as its bytes
    are handed over, with no task or stream reader of its own to wake (a task per stream made the receiving
    process's turn through 1,000 sockets, not the server, much of the figure)."""

    def __init__(self) -> None:
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b''
        self.seen = b''
        self.waiting: _Arrivals | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            head, found, data = self.head.partition(b'\r\n\r\n')
            if not found:
                return
            if not head.startswith(b'HTTP/1.1 200'):
                self.opened.set_exception(RuntimeError(f'fan-out stream: {head.decode(errors="replace")[:200]}'))
                return
            self.opened.set_result(None)
        waiting = self.waiting
        if waiting is not None:
            self.seen = self.seen[-256:] + data
            if waiting.marker in self.seen:
                self.waiting, self.seen = None, b''
                waiting.arrived(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        error = RuntimeError(f'fan-out: a stream ended ({exc!r})')
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.waiting is not None:
            self.waiting.failed(error)


async def _fanout(url_a: str, port_b: int) -> list[float]:
    """Open `FANOUT_STREAMS` on B on one session; append `FANOUT_APPENDS` times through A; the latencies (ms)."""
    session = 'fanout'
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as client:
        async with client.post(f'{url_a}{API}/sessions/{session}/messages', json=[message(0)]) as reply:
            if reply.status != 201:
                raise RuntimeError(f'fan-out: creating the session: {reply.status} {await reply.text()}')
        streams: list[_Stream] = []
        gate = asyncio.Semaphore(OPEN_AT_ONCE)

        async def open_one() -> None:
            async with gate:
                transport, stream = await loop.create_connection(_Stream, '127.0.0.1', port_b)
                streams.append(stream)
                transport.write(f'GET {_events_path(session)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.encode())
                await stream.opened

        try:
            await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(FANOUT_STREAMS))), DEADLINE)
            latencies: list[float] = []
            for n in range(FANOUT_APPENDS + 1):  # the first, a warm-up, is not counted (the docstring says why)
                body = json.dumps([{'role': 'user', 'content': f'fan-out {n}'}]).encode()
                arrivals = _Arrivals(f'fan-out {n}"'.encode(), len(streams))
                for stream in streams:
                    stream.waiting = arrivals
                sent = time.monotonic()
                async with client.post(f'{url_a}{API}/sessions/{session}/messages', data=body,
                                       headers={'Content-Type': 'application/json'}) as reply:  # fmt: skip
                    if reply.status != 201:
                        raise RuntimeError(f'fan-out append: {reply.status} {await reply.text()}')
                await asyncio.wait_for(arrivals.done, DEADLINE)
                if n > 0:
                    latencies += [1000 * (at - sent) for at in arrivals.times]
                await asyncio.sleep(0.2)
            return latencies
        finally:
            for stream in streams:
                if stream.transport is not None:
                    stream.transport.close()


def fanout(workdir: Path, redis_server: RedisServer) -> dict[str, Any]:
    env = {'REDIS_URL': redis_server.url, 'MEMSVC_KEY_PREFIX': 'benchfanout', **_stream_env(FANOUT_STREAMS)}
    replica_a = start_memsvc('redis', workdir, env=env, name='replica-a')
    try:
        replica_b = start_memsvc('redis', workdir, env=env, name='replica-b')
        try:
            latencies = asyncio.run(_fanout(replica_a.url, replica_b.port))
        finally:
            replica_b.stop()
    finally:
        replica_a.stop()
    cuts = statistics.quantiles(latencies, n=100, method='inclusive')
    p50, p99 = statistics.median(latencies), cuts[98]
    return {
        'streams': FANOUT_STREAMS,
        'appends': FANOUT_APPENDS,
        'deliveries': len(latencies),
        'p50_ms': p50,
        'p99_ms': p99,
        'max_ms': max(latencies),
        'target_p99_ms': TARGET_FANOUT_P99_MS,
        'met': p99 <= TARGET_FANOUT_P99_MS,
    }


def fork(workdir: Path, redis_server: RedisServer) -> dict[str, Any]:
    env = {'REDIS_URL': redis_server.url, 'MEMSVC_KEY_PREFIX': 'benchfork'}
    server = start_memsvc('redis', workdir, env=env, name='fork')
    try:
        preload(server.url, ['fork-src'], FORK_MESSAGES)
        times = []
        for _ in range(1 + FORK_RUNS):  # the first is a warm-up
            request = urllib.request.Request(
                f'{server.url}{API}/sessions/fork-src/fork?include_messages=false',
                data=b'{}',
                headers={'Content-Type': 'application/json'},
                method='POST',
            )
            started = time.monotonic()
            with urllib.request.urlopen(request, timeout=60) as reply:
                reply.read()
                if reply.status != 201:
                    raise RuntimeError(f'fork: {reply.status}')
            times.append(1000 * (time.monotonic() - started))
    finally:
        server.stop()
    median = statistics.median(times[1:])
    return {
        'messages': FORK_MESSAGES,
        'runs_ms': times[1:],
        'median_ms': median,
        'target_ms': TARGET_FORK_MS,
        'met': median <= TARGET_FORK_MS,
    }


def section_live(workdir: Path, redis_server: RedisServer, seconds: int, warmup: int) -> dict[str, Any]:
    raise_fd_limit(IDLE_STREAMS + 1000)
    out: dict[str, Any] = {'idle': []}
    print(f'\nlive: {IDLE_STREAMS:,} idle event streams on one process (get last 20 by wrk, {seconds} s per run)')
    for store, env in (('in_memory', {}), ('redis', {'REDIS_URL': redis_server.url})):
        row = idle_streams(store, workdir, env, seconds, warmup)
        out['idle'].append(row)
        print(
            f'  {store:<10} {row["bytes_per_stream"] / 1024:6.1f} KB/stream (RSS {row["rss_before"] / 2**20:.0f} ->'
            f' {row["rss_after"] / 2**20:.0f} MB; opened in {row["open_seconds"]:.1f} s), target <= '
            f'{TARGET_BYTES_PER_STREAM // 1024} KB: {"met" if row["memory_met"] else "NOT met"};'
            f' get last 20 {statistics.median(row["rps_with"]):.0f} req/s with them, its twin without'
            f' {statistics.median(row["rps_without"]):.0f}, x{row["rps_ratio"]:.2f} (median of {IDLE_ROUNDS} rounds;'
            f' x{row["twins_ratio_before_streams"]:.2f} before they opened), target >= {TARGET_RPS_RATIO}:'
            f' {"met" if row["rps_met"] else "NOT met"}',
            flush=True,
        )
    print(f'\nlive: fan-out, {FANOUT_STREAMS:,} streams on replica B, {FANOUT_APPENDS} appends through replica A')
    out['fanout'] = row = fanout(workdir, redis_server)
    print(
        f'  delivery p50 {row["p50_ms"]:.1f} ms, p99 {row["p99_ms"]:.1f} ms, max {row["max_ms"]:.1f} ms'
        f' ({row["deliveries"]:,} deliveries), target p99 <= {TARGET_FANOUT_P99_MS:.0f} ms:'
        f' {"met" if row["met"] else "NOT met"}',
        flush=True,
    )
    print(f'\nlive: fork of {FORK_MESSAGES:,} messages on redis, median of {FORK_RUNS}')
    out['fork'] = row = fork(workdir, redis_server)
    print(
        f'  {row["median_ms"]:.1f} ms ({", ".join(f"{t:.0f}" for t in row["runs_ms"])}), target <='
        f' {TARGET_FORK_MS:.0f} ms: {"met" if row["met"] else "NOT met"}',
        flush=True,
    )
    return out


def live_targets(live: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets from the `live` section, as `bench.report.targets_met` lists them."""
    checks = []
    for row in live.get('idle', []):
        store = f'memsvc-{row["store"]}'
        checks.append(
            {
                'target': f'{store} memory per idle event stream <= {TARGET_BYTES_PER_STREAM} B',
                'value': row['bytes_per_stream'],
                'met': row['memory_met'],
            }
        )
        checks.append(
            {
                'target': f'{store} get_last_20 with {IDLE_STREAMS:,} streams open >= {TARGET_RPS_RATIO} x without',
                'value': row['rps_ratio'],
                'met': row['rps_met'],
            }
        )
    if 'fanout' in live:
        target = f'fan-out to {FANOUT_STREAMS:,} streams on another replica p99 <= {TARGET_FANOUT_P99_MS:.0f} ms'
        checks.append({'target': target, 'value': live['fanout']['p99_ms'], 'met': live['fanout']['met']})
    if 'fork' in live:
        target = f'fork of {FORK_MESSAGES:,} messages on redis <= {TARGET_FORK_MS:.0f} ms (median)'
        checks.append({'target': target, 'value': live['fork']['median_ms'], 'met': live['fork']['met']})
    return checks
