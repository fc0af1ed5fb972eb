"""A real `memsvc serve` for the client's tests (and the adapters'), on a Redis of its own, so that a test can stop,
pause or restart either and find every acknowledged write afterwards."""

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.servers import RedisServer, clean_env, free_port, wait_until_serving

KEY = 'client-key'
DEADLINE_SECONDS = 60.0


@dataclass
class Served:
    """memsvc on redis at `url`, its log in `directory`."""

    redis: RedisServer
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def start(self) -> None:
        env = clean_env(
            MEMORY_TYPE='redis',
            REDIS_URL=self.redis.url,
            MEMSVC_API_KEY=KEY,
            MEMSVC_LOG_LEVEL='WARNING',
            MEMSVC_STORE_TIMEOUT_SECONDS='1',
        )
        with (self.directory / 'memsvc.log').open('ab') as log:
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'memsvc', 'serve', '--port', str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until_serving(self.port, self.process)

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops a replica; it must exit cleanly."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.log()

    def log(self) -> str:
        return (self.directory / 'memsvc.log').read_text(errors='replace')[-3000:]

    def count(self, method: str, route: str, status: int) -> float:
        """A `memsvc_requests_total` figure from `/metrics`."""
        wanted = f'memsvc_requests_total{{method="{method}",route="/api/v1/chat{route}",status="{status}"}} '
        for line in requests.get(self.url + '/metrics', timeout=10).text.splitlines():
            if line.startswith(wanted):
                return float(line.rsplit(' ', 1)[1])
        return 0.0

    def gauge(self, name: str) -> float:
        for line in requests.get(self.url + '/metrics', timeout=10).text.splitlines():
            if line.startswith(name + ' '):
                return float(line.rsplit(' ', 1)[1])
        return 0.0

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not check():
            assert time.monotonic() < deadline, f'not within {DEADLINE_SECONDS} s: {what}'
            time.sleep(0.02)


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp('client-serve')
    redis = RedisServer.start(directory / 'redis')
    server = Served(redis, directory)
    try:
        server.start()
        yield server
        server.stop()
        assert 'Traceback' not in server.log(), server.log()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        redis.stop(kill=True)
