"""The fault soak: two replicas on one Redis under gateway-like load from a second process, while
Redis is restarted and one replica is sent SIGTERM and started again.

    python -m tests.soak [--seconds 60]          # `make soak`; tests/test_soak.py runs a short one

The load driver (`python -m tests.soak drive …`, started by the orchestrator) plays a gateway: each
turn reads the last 20 messages of a session and appends a user/assistant pair with an
Idempotency-Key; on a 503 or a refused connection it retries the same write, with the same key, on
the other replica, the way a load balancer and a careful client would. It writes what it saw to a
JSON file. Afterwards the orchestrator reads every session back and counts: every acknowledged
write must be there exactly once, and the only error status allowed is 503.
"""

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import API
from tests.servers import RedisServer, clean_env, free_port, wait_until_serving

RETRY_FOR_SECONDS = 30.0
REQUEST_TIMEOUT = 10.0
SETTLE_SECONDS = 1.0
"""After a fault ends, how long pooled connections to the restarted process may still fail once."""


# --- the load driver (a process of its own) --------------------------------------------------


@dataclass
class Seen:
    acked: list[tuple[str, str]] = field(default_factory=list)  # (session id, idempotency key) of each 201
    given_up: list[tuple[str, str]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # the messages of 503s and other errors
    requests: list[tuple[float, float, str]] = field(default_factory=list)  # (wall time, seconds, status)


async def _request(
    http: aiohttp.ClientSession, seen: Seen, method: str, url: str, **kwargs: Any
) -> tuple[int, Any] | None:
    """One HTTP request; None when the connection failed (the replica is down)."""
    start = time.time()
    try:
        async with http.request(method, url, **kwargs) as response:
            body = await response.json(content_type=None)
            outcome = f'{method} {response.status}'
            if response.status >= 500:
                seen.errors[body['error']['message']] += 1
    except (aiohttp.ClientConnectionError, TimeoutError):
        outcome = f'{method} connection error'
        body = None
    seen.statuses[outcome] += 1
    seen.requests.append((start, time.time() - start, outcome))
    return None if body is None else (response.status, body)


async def _turn(http: aiohttp.ClientSession, seen: Seen, urls: list[str], session_id: str, turn: int) -> None:
    base = urls[turn % len(urls)]
    await _request(http, seen, 'GET', f'{base}{API}/sessions/{session_id}/messages', params={'limit': '20'})
    key = uuid.uuid4().hex
    pair = [{'role': 'user', 'content': f'{key}:user'}, {'role': 'assistant', 'content': f'{key}:assistant'}]
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    attempt = turn
    while time.monotonic() < deadline:
        base = urls[attempt % len(urls)]
        attempt += 1
        answer = await _request(
            http,
            seen,
            'POST',
            f'{base}{API}/sessions/{session_id}/messages',
            json=pair,
            headers={'Idempotency-Key': key},
        )
        if answer is not None and answer[0] == 201:
            seen.acked.append((session_id, key))
            return
        if answer is not None and answer[0] != 503:
            raise AssertionError(f'unexpected answer {answer}')
        await asyncio.sleep(0.05)  # back off before the retry
    seen.given_up.append((session_id, key))


async def drive(urls: list[str], seconds: float, sessions: int, concurrency: int) -> Seen:
    seen = Seen()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    # Idle client connections go after 1 s, as behind a load balancer: one kept from before a replica's
    # restart would fail on its next use, an artefact of this driver rather than an answer of memsvc.
    connector = aiohttp.TCPConnector(keepalive_timeout=1.0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def gateway(worker: int) -> None:
            rng = random.Random(worker)
            turn = worker
            while time.monotonic() < deadline:
                await _turn(http, seen, urls, f'soak-{rng.randrange(sessions)}', turn)
                turn += 1

        await asyncio.gather(*(gateway(w) for w in range(concurrency)))
    return seen


# --- the orchestrator --------------------------------------------------------------------------


@dataclass
class Report:
    acknowledged: int
    lost: int
    duplicated: int
    given_up: int
    statuses: dict[str, int]
    statuses_outside_faults: dict[str, int]
    errors: dict[str, int]
    errors_after_faults_seconds: list[float]
    replica_exit_status: int
    latency_ms: dict[str, dict[str, float]]

    def ok(self) -> bool:
        """Every acknowledged write present exactly once, the SIGTERM'd replica drained and exited 0, and no
        error but 503 (or a refused connection, while a replica restarts) anywhere. A read of a session
        whose first turn has not happened yet is a 404. Errors outside the fault windows are reported with
        their timing (`errors_after_faults_seconds`), not failed on: on a loaded machine a request that
        waited through a fault can end just after it."""
        allowed = {'GET 200', 'GET 404', 'POST 201', 'GET 503', 'POST 503'}
        allowed |= {'GET connection error', 'POST connection error'}
        return (
            self.lost == 0 and self.duplicated == 0 and self.replica_exit_status == 0 and set(self.statuses) <= allowed
        )


class _Replica:
    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open('ab') as out:
            process = subprocess.Popen(
                [sys.executable, '-m', 'memsvc', 'serve', '--port', str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until_serving(self.port, process)
        self.wait_until_ready()
        return process

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/readyz', timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f'the replica on {self.port} did not become ready')

    def restart(self) -> int:
        """SIGTERM, wait for the drain and the exit, start again; return the exit status."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=30)
        self.process = self._start()
        return status

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {'count': len(ordered), 'p50': pick(0.5), 'p99': pick(0.99), 'max': pick(1.0)}


def run(seconds: float, workdir: Path, sessions: int = 50, concurrency: int = 32) -> Report:
    redis_server = RedisServer.start(workdir / 'redis')
    env = clean_env(
        MEMORY_TYPE='redis', REDIS_URL=redis_server.url, MEMSVC_KEY_PREFIX='soak', MEMSVC_LOG_LEVEL='WARNING'
    )
    replicas = [_Replica(free_port(), env, workdir / f'replica{n}.log') for n in range(2)]
    urls = [f'http://127.0.0.1:{replica.port}' for replica in replicas]
    out = workdir / 'driver.json'
    driver = subprocess.Popen(
        [sys.executable, '-m', 'tests.soak', 'drive', '--seconds', str(seconds), '--out', str(out), *urls],
        env=clean_env(),
    )
    faults: dict[str, tuple[float, float]] = {}
    try:
        time.sleep(seconds * 0.3)
        start = time.time()
        redis_server.stop()  # SIGTERM: Redis has fsynced every acknowledged write (appendfsync always)
        time.sleep(min(2.0, seconds * 0.1))
        redis_server.launch()
        for replica in replicas:
            replica.wait_until_ready()
        faults['redis restart'] = (start, time.time() + SETTLE_SECONDS)
        time.sleep(seconds * 0.2)
        start = time.time()
        replica_exit_status = replicas[0].restart()
        faults['replica restart'] = (start, time.time() + SETTLE_SECONDS)
        assert driver.wait(timeout=seconds + 2 * RETRY_FOR_SECONDS) == 0, 'the load driver failed'
        seen = json.loads(out.read_text())
        stored = _read_back(urls[1], {session for session, _ in seen['acked'] + seen['given_up']})
    finally:
        if driver.poll() is None:
            driver.kill()
        for replica in replicas:
            replica.stop()
        redis_server.stop(kill=True)

    counts = Counter(content for messages in stored.values() for content in messages)
    acked = [key for _, key in seen['acked']]
    lost = sum(1 for key in acked for part in ('user', 'assistant') if counts[f'{key}:{part}'] == 0)
    duplicated = sum(1 for n in counts.values() if n > 1)

    def in_fault(moment: float) -> str | None:
        return next((name for name, (a, b) in faults.items() if a <= moment <= b), None)

    phases: dict[str, list[float]] = {'steady': [], **{name: [] for name in faults}}
    outside: Counter[str] = Counter()
    late: list[float] = []  # for each error outside the faults: seconds since the last fault ended
    for moment, took, status in seen['requests']:
        phase = in_fault(moment)
        phases[phase or 'steady'].append(took)
        if phase is None:
            outside[status] += 1
            if not status.endswith(('200', '201', '404')):
                ended = [b for _, b in faults.values() if b <= moment]
                late.append(round(moment - max(ended), 2) if ended else -1.0)
    return Report(
        acknowledged=len(acked),
        lost=lost,
        duplicated=duplicated,
        given_up=len(seen['given_up']),
        statuses=dict(seen['statuses']),
        statuses_outside_faults=dict(outside),
        errors=dict(seen['errors']),
        errors_after_faults_seconds=sorted(late),
        replica_exit_status=replica_exit_status,
        latency_ms={name: _percentiles(values) for name, values in phases.items()},
    )


def _read_back(base: str, session_ids: set[str]) -> dict[str, list[str]]:
    async def read() -> dict[str, list[str]]:
        async with aiohttp.ClientSession() as http:
            stored = {}
            for session_id in sorted(session_ids):
                async with http.get(f'{base}{API}/sessions/{session_id}/messages') as response:
                    assert response.status == 200, await response.text()
                    stored[session_id] = [m['content'] for m in await response.json()]
            return stored

    return asyncio.run(read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tests.soak', description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command')
    drive_args = commands.add_parser('drive', help='the load driver (started by the soak itself)')
    drive_args.add_argument('urls', nargs='+')
    drive_args.add_argument('--seconds', type=float, required=True)
    drive_args.add_argument('--out', type=Path, required=True)
    parser.add_argument('--seconds', type=float, default=60.0, help='length of the load (default 60)')
    args = parser.parse_args(argv)
    if args.command == 'drive':
        seen = asyncio.run(drive(args.urls, args.seconds, sessions=50, concurrency=32))
        args.out.write_text(json.dumps({**asdict(seen), 'statuses': dict(seen.statuses), 'errors': dict(seen.errors)}))
        return 0
    with tempfile.TemporaryDirectory(prefix='memsvc-soak-') as workdir:
        report = run(args.seconds, Path(workdir))
    print(json.dumps(asdict(report), indent=2))
    print('soak: ok' if report.ok() else 'soak: FAILED')
    return 0 if report.ok() else 1


if __name__ == '__main__':
    sys.exit(main())
