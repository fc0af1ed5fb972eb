"""A real Chroma server for the test suite: `chroma run` (it ships with chromadb) on a free loopback port, with its
data in a temporary directory. Tests can stop it and start it again on the same port and directory (outage tests).
"""

import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from tests.servers import ServerProcess


def chroma_binary() -> str:
    beside = Path(sys.executable).parent / 'chroma'
    found = str(beside) if beside.exists() else shutil.which('chroma')
    if found is None:
        pytest.fail('the chroma command is missing: install memsvc[chroma] (make install does)')
    return found


@dataclass
class ChromaServer(ServerProcess):
    name: ClassVar[str] = 'chroma'
    start_timeout: ClassVar[float] = 30.0

    def command(self) -> list[str]:
        data = str(self.directory / 'data')
        return [chroma_binary(), 'run', '--path', data, '--host', '127.0.0.1', '--port', str(self.port)]

    def answers(self) -> bool:
        url = f'http://127.0.0.1:{self.port}/api/v2/heartbeat'
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture(scope='session')
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One Chroma server for the whole run; tests keep apart through their own key prefixes (collection names)."""
    server = ChromaServer.start(tmp_path_factory.mktemp('chroma-server'))
    yield server
    server.stop()
