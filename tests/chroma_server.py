"""A real Chroma server for the test suite: `chroma run` (it ships with chromadb) on a free loopback port, with its
data in a temporary directory. Tests can stop it and start it again on the same port and directory (outage tests).
"""

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_SECONDS = 30.0


def chroma_binary() -> str:
    beside = Path(sys.executable).parent / 'chroma'
    found = str(beside) if beside.exists() else shutil.which('chroma')
    if found is None:
        pytest.fail('the chroma command is missing: install memsvc[chroma] (make install does)')
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@dataclass
class ChromaServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, directory: Path, port: int | None = None) -> 'ChromaServer':
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(port=port or free_port(), directory=directory)
        server.launch()
        return server

    @property
    def log(self) -> Path:
        return self.directory / 'chroma.log'

    def launch(self) -> None:
        """Start (or start again) on the same port and directory; return once it answers its heartbeat."""
        assert self.process is None or self.process.poll() is not None, 'already running'
        args = [chroma_binary(), 'run', '--path', str(self.directory / 'data'), '--host', '127.0.0.1']
        with self.log.open('ab') as log:
            self.process = subprocess.Popen(
                [*args, '--port', str(self.port)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f'chroma run on port {self.port} exited at start:\n{self.log_tail()}')
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'chroma run on port {self.port} did not answer:\n{self.log_tail()}')
            time.sleep(0.05)

    def answers(self) -> bool:
        url = f'http://127.0.0.1:{self.port}/api/v2/heartbeat'
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
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


@pytest.fixture(scope='session')
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One Chroma server for the whole run; tests keep apart through their own key prefixes (collection names)."""
    server = ChromaServer.start(tmp_path_factory.mktemp('chroma-server'))
    yield server
    server.stop()
