"""The processes `python -m bench` starts: the ceiling, memsvc (through its real command line) and
redis-server, each pinned to its core, and what they cost in CPU time and memory."""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.servers import RedisServer, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVER_CPU = '0'
LOAD_CPU = '1'


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


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
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
        pinned(cpus, [*argv, '--port', str(port)]),
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


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
