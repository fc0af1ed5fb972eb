"""Real servers for the test suite, started by the suite on free loopback ports in temporary directories.

`RedisServer` is one `redis-server` with AOF on (fsync on every write), so a test can stop it, start
it again on the same port and directory, and find every acknowledged write. `RedisClusterServers`
is a 3-master Redis Cluster built with `redis-cli --cluster create`. Never the machine's own Redis.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest
import redis

from tests.helpers import is_memsvc_variable

START_TIMEOUT_SECONDS = 60.0
"""How long a started process may take to listen. Generous: the wait ends as soon as it listens, and on a loaded
2-core machine importing memsvc and its dependencies alone has taken over 15 s."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without memsvc's variables, plus `extra`: for every process the suite starts,
    memsvc and the servers alike (`chroma run` reads `CHROMA_*` variables too, which a shell may set for memsvc)."""
    env = {name: value for name, value in os.environ.items() if not is_memsvc_variable(name)}
    # like the in-process stores of conftest.py: on a loaded machine a memsvc started on Redis has timed out
    # opening its first connection within the default 0.5 s, and exited (memsvc does not start without Redis);
    # a refused connection (Redis down) still fails at once
    env['MEMSVC_REDIS_CONNECT_TIMEOUT'] = '5'
    env.update(extra)
    return env


def wait_until_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    """Return once `process` accepts connections on `port`; fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else f'exited {process.returncode}'
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f'memsvc did not listen on {port} within {START_TIMEOUT_SECONDS} s')


def redis_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f'{name} is not on PATH: install Redis (apt-get install redis-server) or run `make test`')
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(('127.0.0.1', 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class ServerProcess:
    """A server the suite runs as a child process on a port and in a directory of its own, so that a test can
    stop it, pause it and start it again on both. Subclasses say how to run it and how to tell it answers."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name: ClassVar[str]
    start_timeout: ClassVar[float] = START_TIMEOUT_SECONDS

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    @classmethod
    def start(cls, directory: Path, port: int | None = None, **options: Any) -> Self:
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(port=port or free_port(), directory=directory, **options)
        server.launch()
        return server

    @property
    def log(self) -> Path:
        return self.directory / f'{self.name}.log'

    def environment(self) -> dict[str, str]:
        return clean_env()

    def launch(self) -> None:
        """Start (or start again) on the same port and directory; return once it answers."""
        self.spawn()
        self.wait_until_answering()

    def spawn(self) -> None:
        """Start the process and return at once (`wait_until_answering` then waits for it): servers that take
        seconds to start can start side by side."""
        assert self.process is None or self.process.poll() is not None, 'already running'
        with self.log.open('ab') as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.environment()
            )

    def wait_until_answering(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f'{self.name} on port {self.port} exited at start:\n{self.log_tail()}')
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f'{self.name} on port {self.port} did not answer:\n{self.log_tail()}')
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (the server finishes what it writes and exits) or, with `kill`, SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:])
        return '(no log)'


@dataclass
class RedisServer(ServerProcess):
    """SIGTERM makes Redis fsync its AOF before it exits; with fsync on every write (the default here), even
    SIGKILL loses no acknowledged write."""

    extra_args: Sequence[str] = ()

    name: ClassVar[str] = 'redis-server'

    @property
    def url(self) -> str:
        return f'redis://127.0.0.1:{self.port}/0'

    def command(self) -> list[str]:
        return [
            redis_binary('redis-server'),
            '--port', str(self.port),
            '--bind', '127.0.0.1',
            '--dir', str(self.directory),
            '--appendonly', 'yes',
            '--appendfsync', 'always',
            '--save', '',
            '--daemonize', 'no',
            *self.extra_args,
        ]  # fmt: skip

    def answers(self) -> bool:
        try:
            with self.client(socket_timeout=1) as client:
                client.ping()
        except redis.RedisError:
            return False
        return True

    def client(self, socket_timeout: float = 5) -> 'redis.Redis':
        return redis.Redis(host='127.0.0.1', port=self.port, socket_timeout=socket_timeout)


@dataclass
class RedisClusterServers:
    nodes: list[RedisServer]

    @classmethod
    def start(cls, directory: Path, masters: int = 3) -> 'RedisClusterServers':
        ports = free_ports(2 * masters)
        nodes: list[RedisServer] = []
        try:
            for n in range(masters):
                # A node that misses the others' pings for cluster-node-timeout is marked failed, and with no
                # replicas the cluster then refuses every command until it answers again. No test fails a node
                # over, and a loaded or swapping CI machine can stall a node for seconds: 60 s, not 5.
                cluster_args = [
                    '--cluster-enabled', 'yes',
                    '--cluster-config-file', 'nodes.conf',
                    '--cluster-port', str(ports[masters + n]),
                    '--cluster-node-timeout', '60000',
                    '--appendfsync', 'everysec',
                ]  # fmt: skip
                nodes.append(RedisServer.start(directory / f'node{n}', ports[n], extra_args=cluster_args))
            create = [
                redis_binary('redis-cli'),
                '--cluster', 'create',
                *[f'127.0.0.1:{node.port}' for node in nodes],
                '--cluster-replicas', '0',
                '--cluster-yes',
            ]  # fmt: skip
            subprocess.run(
                create,
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT_SECONDS,
                env=clean_env(),
            )
            cluster = cls(nodes)
            cluster.wait_until_ok()
        except BaseException:
            for node in nodes:
                node.stop(kill=True)
            raise
        return cluster

    @property
    def url(self) -> str:
        return f'redis+cluster://127.0.0.1:{self.nodes[0].port}'

    def wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    states.append(client.cluster('INFO').get('cluster_state'))
            if all(state == 'ok' for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f'the test cluster did not come up: {states}')
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)


@pytest.fixture(scope='session')
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the whole run; tests keep apart through their own key prefixes."""
    server = RedisServer.start(tmp_path_factory.mktemp('redis'))
    yield server
    server.stop(kill=True)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop, pause and restart."""
    server = RedisServer.start(tmp_path / 'redis')
    yield server
    server.stop(kill=True)


@pytest.fixture(scope='session')
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers.start(tmp_path_factory.mktemp('redis-cluster'))
    yield cluster
    cluster.stop()
