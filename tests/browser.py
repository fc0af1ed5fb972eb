"""What the console's browser tests and `make screenshots` share: Debian's Chromium driven by Playwright, a real
`memsvc serve` process for the page to talk to, and a small blocking client to arrange data through the API.

Playwright rather than Selenium: it talks to Chromium over the DevTools protocol, so there is no second binary
(chromedriver) whose version must match the browser's; its locators wait for what they look for, so the tests
wait on conditions (a row, a text, the live indicator) rather than sleeping; and it reports the bytes each
response took, which the page-weight test reads. Its Python package ships only the driver: the browser is
Debian's (`/usr/bin/chromium`, or `MEMSVC_TEST_CHROMIUM`), and nothing is downloaded.
"""

import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import pytest
from playwright.sync_api import Browser, Playwright

from tests.servers import ServerProcess, clean_env

CHROMIUM_FLAGS = [  # besides Playwright's own (headless; no sandbox, as the tests run as root on CI)
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',  # the machines have no network: nothing else to ask for
    '--disable-component-update',
    '--disable-sync',
]
API = '/api/v1/chat'


def chromium_path() -> str:
    found = os.environ.get('MEMSVC_TEST_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
    if not os.path.exists(found):
        pytest.fail('Chromium is not installed: apt-get install chromium (or run .ci/run, which installs it)')
    return found


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, chromium_sandbox=False)


@dataclass
class MemsvcServer(ServerProcess):
    """`memsvc serve` on its own port, with `env` (e.g. MEMORY_TYPE, MEMSVC_API_KEYS) on top of a clean
    environment."""

    env: dict[str, str] = field(default_factory=dict)
    name: ClassVar[str] = 'memsvc'

    def command(self) -> list[str]:
        return [sys.executable, '-m', 'memsvc', 'serve', '--port', str(self.port)]

    def environment(self) -> dict[str, str]:
        return clean_env(**self.env)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f'{self.url}/healthz', timeout=2):
                return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'


class Api:
    """A blocking client of the chat API with one key (or none), for arranging what a test's page shows."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.url, self.key = url, key

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """`path` under the chat API (`sessions/…`), or from the root when it starts with `/`."""
        data = None if body is None else orjson.dumps(body)
        url = self.url + path if path.startswith('/') else f'{self.url}{API}/{path}'
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header('Content-Type', 'application/json')
        if self.key is not None:
            request.add_header('Authorization', f'Bearer {self.key}')
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    def append(self, session_id: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.ok('POST', f'sessions/{quote(session_id)}/messages', list(messages))
        return answer

    def create(self, session_id: str, **metadata: Any) -> None:
        self.ok('POST', 'sessions', {'id': session_id, 'metadata': metadata})


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe='')


def user(content: str, **fields: Any) -> dict[str, Any]:
    return {'role': 'user', 'content': content, **fields}


def assistant(content: str, **fields: Any) -> dict[str, Any]:
    return {'role': 'assistant', 'content': content, **fields}


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        'id': call_id,
        'type': 'function',
        'function': {'name': name, 'arguments': orjson.dumps(arguments).decode()},
    }


def tool_result(call_id: str, content: str) -> dict[str, Any]:
    return {'role': 'tool', 'content': content, 'tool_call_id': call_id}
