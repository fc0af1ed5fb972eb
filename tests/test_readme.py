"""Runs every curl example of the README's API section, in order, and compares the responses.

Timestamps and listing cursors differ between runs; everything else must match exactly.
"""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.settings import Settings

README = Path(__file__).parent.parent / 'README.md'
BASE = 'http://127.0.0.1:8080'
TIMESTAMP = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z')
CURSOR = re.compile(r'cursor=[A-Za-z0-9_-]+')


@dataclass
class Example:
    command: str
    expected: list[str] = field(default_factory=list)


def examples() -> list[Example]:
    found: list[Example] = []
    for block in re.findall(r'```console\n(.*?)```', README.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith('$ '):
                found.append(Example(line[2:]))
            elif line and found:
                found[-1].expected.append(line)
    return found


def normal(text: str) -> str:
    return CURSOR.sub('cursor=…', TIMESTAMP.sub('<time>', text))


async def run(client: TestClient, command: str) -> tuple[int, dict[str, str], str]:  # type: ignore[type-arg]
    words = shlex.split(command)
    assert words[0] == 'curl', command
    method, headers, data, url = 'GET', {}, None, None
    rest = iter(words[1:])
    for word in rest:
        if word == '-X':
            method = next(rest)
        elif word == '-H':
            name, _, value = next(rest).partition(': ')
            headers[name] = value
        elif word == '-d':
            data = next(rest).encode()
            method = 'POST' if method == 'GET' else method
        elif word.startswith(BASE):
            url = word.removeprefix(BASE)
        else:
            assert word in ('-s', '-i'), word
    assert url is not None, command
    async with client.request(method, url, headers=headers, data=data) as response:
        return response.status, dict(response.headers), await response.text()


async def test_readme_examples_give_the_documented_responses(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(Settings()))
    found = examples()
    assert len(found) >= 15
    for example in found:
        status, headers, body = await run(client, example.command)
        if ' -i ' in example.command:
            status_line, *header_lines = example.expected[:-1]
            assert status_line.split()[1] == str(status), example.command
            for line in header_lines:
                name, _, value = line.partition(': ')
                assert normal(headers.get(name, '')) == normal(value), (example.command, name)
        assert normal(body) == normal(example.expected[-1]), example.command
