"""`memsvc export` and `memsvc import` as an operator runs them: real processes against real `memsvc serve`s, an
in_memory one moved to a Redis one, with a body far over the target's MEMSVC_MAX_BODY_BYTES."""

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import RedisServer, clean_env, free_port, wait_until_serving
from tests.test_cli import http


@pytest.fixture
def serve() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        process.stderr.close()
        assert b'Traceback' not in log, log.decode(errors='replace')[-3000:]


def start(started: list[subprocess.Popen[bytes]], **env: str) -> str:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)], env=clean_env(**env), stderr=subprocess.PIPE
    )
    started.append(process)
    wait_until_serving(port, process)
    return f'http://127.0.0.1:{port}'


def memsvc(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, '-m', 'memsvc', *args], capture_output=True, timeout=120, env=clean_env())


def test_an_in_memory_deployment_moves_to_redis_in_three_commands(
    serve: list[subprocess.Popen[bytes]], redis_server: RedisServer, tmp_path: Path
) -> None:
    source = start(serve, MEMSVC_API_KEY='old-key')
    target = start(
        serve,
        MEMORY_TYPE='redis',
        REDIS_URL=redis_server.url,
        MEMSVC_KEY_PREFIX=f'cli-{free_port()}',
        MEMSVC_MAX_BODY_BYTES='1024',
    )
    port = int(source.rsplit(':', 1)[1])
    assert http(port, 'GET', '/api/v1/chat/export')[0] == 401, 'the source needs its key'
    for n in range(20):
        batch = orjson.dumps([{'role': 'user', 'content': f'turn {n} ' + 'x' * 100}] * 3)
        assert _post(port, f'/api/v1/chat/sessions/s{n}/messages', batch, 'old-key') == 201

    dump = tmp_path / 'sessions.ndjson'
    exported = memsvc('export', '--url', source, '--api-key', 'old-key', '-o', str(dump))
    assert exported.returncode == 0, exported.stderr
    assert b'20 sessions' in exported.stderr
    assert dump.stat().st_size > 5 * 1024, 'far over the target MEMSVC_MAX_BODY_BYTES'
    assert not Path(f'{dump}.partial').exists()

    imported = memsvc('import', '--url', target, str(dump))
    assert imported.returncode == 0, imported.stderr
    assert b'20 imported, 0 skipped' in imported.stderr

    again = memsvc('export', '--url', target)
    assert again.returncode == 0, again.stderr
    assert again.stdout == dump.read_bytes(), 'the Redis deployment exports the very same file'

    bad = tmp_path / 'bad.ndjson'
    bad.write_bytes(dump.read_bytes().splitlines()[0] + b'\n{"id": "x"}\n')
    refused = memsvc('import', '--url', target, str(bad))
    assert refused.returncode == 1
    assert b'line 2: validation_error' in refused.stderr

    wrong = memsvc('export', '--url', source, '--api-key', 'nope', '-o', str(tmp_path / 'no.ndjson'))
    assert wrong.returncode == 1
    assert b'401 unauthorized' in wrong.stderr
    assert not list(tmp_path.glob('no.ndjson*')), 'no file, not even a partial one'


def _post(port: int, path: str, body: bytes, key: str) -> int:
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        head = (
            f'POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n'
            f'Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\r\n'
        )
        sock.sendall(head.encode() + body)
        data = b''
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split()[1])


def test_export_with_metadata_exports_one_persons_sessions(serve: list[subprocess.Popen[bytes]]) -> None:
    url = start(serve)
    port = int(url.rsplit(':', 1)[1])
    for session_id, user_id in [('a1', 'alice'), ('b1', 'bob'), ('a2', 'alice')]:
        body = orjson.dumps({'id': session_id, 'metadata': {'user_id': user_id}})
        assert _post(port, '/api/v1/chat/sessions', body, 'unused') == 201

    hers = memsvc('export', '--url', url, '--metadata', 'user_id=alice')
    assert hers.returncode == 0, hers.stderr
    assert [orjson.loads(line)['id'] for line in hers.stdout.splitlines()] == ['a2', 'a1']
    assert b'2 sessions' in hers.stderr

    refused = memsvc('export', '--url', url, '--metadata', 'color=red')
    assert refused.returncode == 1
    assert b'400 invalid_parameter' in refused.stderr
    assert b'metadata.user_id' in refused.stderr
    malformed = memsvc('export', '--url', url, '--metadata', 'user_id')
    assert malformed.returncode == 2
    assert b'give KEY=VALUE' in malformed.stderr
