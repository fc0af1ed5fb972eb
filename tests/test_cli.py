"""The command line, run as a real process: start, serve, configuration errors, graceful stop."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import RedisServer, clean_env, free_port, wait_until_serving


def http(port: int, method: str, path: str, body: bytes = b'') -> tuple[int, bytes]:
    with socket.create_connection(('127.0.0.1', port), timeout=5) as sock:
        head = f'{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n'
        sock.sendall(head.encode() + b'Content-Type: application/json\r\n\r\n' + body)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b''
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    return int(head.split()[1]), body


@pytest.fixture
def server() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_serving(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


def test_serve_answers_and_stops_on_sigterm_with_status_0(server: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, process = server
    status, body = http(port, 'POST', '/api/v1/chat/sessions/cli/messages', b'{"role":"user","content":"hi"}')
    assert status == 201
    assert orjson.loads(body)['content'] == 'hi'
    status, body = http(port, 'GET', '/api/v1/chat/sessions/cli/messages')
    assert [m['content'] for m in orjson.loads(body)] == ['hi']
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stderr is not None
    assert b'Traceback' not in process.stderr.read()


def test_sigterm_finishes_requests_in_flight_then_closes_the_store(redis_server: RedisServer) -> None:
    """Requests waiting on the store when SIGTERM arrives are answered before the process exits 0.

    Redis is paused (SIGSTOP) so that the requests are held inside their handlers, then resumed
    after the server has stopped accepting connections.
    """
    port = free_port()
    env = clean_env(
        MEMORY_TYPE='redis',
        REDIS_URL=redis_server.url,
        MEMSVC_KEY_PREFIX=f'drain-{port}',
        MEMSVC_REDIS_SOCKET_TIMEOUT='20',
    )
    process = subprocess.Popen([sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)], env=env)
    socks: list[socket.socket] = []
    try:
        wait_until_serving(port, process)
        redis_server.pause()
        try:
            for n in range(5):
                sock = socket.create_connection(('127.0.0.1', port), timeout=30)
                body = orjson.dumps({'role': 'user', 'content': f'in flight {n}'})
                sock.sendall(
                    b'POST /api/v1/chat/sessions/drain/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
                    b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body)
                )
                socks.append(sock)
            assert http(port, 'GET', '/healthz')[0] == 200  # the five requests have reached their handlers
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wait until it stops accepting new connections
                try:
                    socket.create_connection(('127.0.0.1', port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError('the server kept accepting connections after SIGTERM')
            assert process.poll() is None, 'the process waits for its requests in flight'
        finally:
            redis_server.resume()
        replies = [_read_response(sock) for sock in socks]
        assert [status for status, _ in replies] == [201] * 5
        assert process.wait(timeout=15) == 0
    finally:
        for sock in socks:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    with redis_server.client() as client:
        assert client.llen(f'drain-{port}:{{default/drain}}:msgs') == 5


@pytest.mark.parametrize(
    ('env', 'args', 'names'),
    [
        ({'MEMORY_TYPE': 'postgres'}, [], 'MEMORY_TYPE'),
        ({'MEMSVC_PORT': 'eighty'}, [], 'MEMSVC_PORT'),
        ({'MEMSVC_MAX_BODY_BYTES': '10'}, [], 'MEMSVC_MAX_BODY_BYTES'),
        ({'MEMSVC_SESSION_TTL_SECONDS': '-1'}, [], 'MEMSVC_SESSION_TTL_SECONDS'),
        ({'MEMSVC_LOG_LEVEL': 'chatty'}, [], 'MEMSVC_LOG_LEVEL'),
        ({}, ['--workers', '2'], 'MEMSVC_WORKERS'),
        ({'MEMSVC_WORKERS': '4', 'MEMORY_TYPE': 'in_memory'}, [], 'MEMSVC_WORKERS'),
    ],
)
def test_invalid_configuration_exits_non_zero_with_one_line_naming_the_variable(
    env: dict[str, str], args: list[str], names: str
) -> None:
    port = [] if 'MEMSVC_PORT' in env else ['--port', str(free_port())]
    result = subprocess.run(
        [sys.executable, '-m', 'memsvc', 'serve', *port, *args],
        env=clean_env(**env),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert names in lines[0]


def test_workers_refused_for_in_memory_says_why() -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'memsvc', 'serve', '--workers', '2', '--memory-type', 'in_memory'],
        env=clean_env(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b'in_memory each process would hold different data' in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / 'memsvc'
    result = subprocess.run([str(script), '--version'], capture_output=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith(b'memsvc ')


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)],
            env=clean_env(),
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f'memsvc: cannot listen on 127.0.0.1:{port}: address already in use'
    ]
