"""The HTTP edge (memsvc/edge.py), over raw sockets against real `memsvc serve` processes: deadlines on
receiving requests, the connection bound, checks of the head before the body, aiohttp's parser errors as
our JSON errors (never echoing a header), no version banner.

Deadlines are configured small (0.5 s) and the tests wait for their effect (an answer, a closed
connection) with generous bounds, so they assert what happened, never how long it took.
"""

import contextlib
import hashlib
import inspect
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attr
import orjson
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from memsvc import edge
from memsvc.settings import Settings
from tests.servers import RedisServer, clean_env, free_port, wait_until_serving

SECRET = 'k-SECRET-7f3a'
AUTH = f'Authorization: Bearer {SECRET}\r\n'.encode()
WAIT = 20.0
"""The longest any test waits for an answer it expects: far beyond every deadline configured here."""
API = '/api/v1/chat/sessions'
RESPONSE_LIMIT = 2 * 1024 * 1024


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors='replace')


@contextlib.contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[Served]:
    """`python -m memsvc serve` with `env`; its stderr (the log) goes to a file the test can read."""
    port = free_port()
    log = tmp_path / f'memsvc-{port}.log'
    with log.open('wb') as out:
        process = subprocess.Popen(
            [sys.executable, '-m', 'memsvc', 'serve', '--port', str(port)],
            env=clean_env(MEMSVC_API_KEY=SECRET, **env),
            stdout=out,
            stderr=out,
        )
    try:
        wait_until_serving(port, process)
        yield Served(port, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope='module')
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server whose request deadlines are 0.5 s, and whose answers are at most 2 MiB."""
    with serve(
        tmp_path_factory.mktemp('quick'),
        MEMSVC_HEADER_TIMEOUT_SECONDS='0.5',
        MEMSVC_BODY_TIMEOUT_SECONDS='0.5',
        MEMSVC_MAX_RESPONSE_BYTES=str(RESPONSE_LIMIT),
    ) as served:
        yield served


def connect(port: int) -> socket.socket:
    return socket.create_connection(('127.0.0.1', port), timeout=WAIT)


def send(sock: socket.socket, data: bytes) -> None:
    """Send what the server takes: it may answer and close before it has read everything."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (which every test here expects)."""
    data = b''
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, str]:
        assert self.headers.get('content-type') == 'application/json', self
        payload = orjson.loads(self.body)
        assert set(payload) == {'error'}
        assert set(payload['error']) == {'code', 'message'}
        return dict(payload['error'])


def parse(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b'\r\n\r\n')
    assert sep, f'no complete answer: {raw[:300]!r}'
    lines = head.decode('latin-1').split('\r\n')
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(':')
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get('content-length', len(body)))
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def exchange(port: int, data: bytes) -> tuple[Answer, bytes]:
    """Send `data` on a new connection; the first answer, and all bytes up to the server's close."""
    with connect(port) as sock:
        send(sock, data)
        raw = read_until_closed(sock)
    return parse(raw), raw


def request(method: str, path: str, headers: bytes = b'', body: bytes = b'') -> bytes:
    length = b'Content-Length: %d\r\n' % len(body) if body else b''
    return b'%s %s HTTP/1.1\r\nHost: x\r\n%s%s%s\r\n%s' % (method.encode(), path.encode(), AUTH, length, headers, body)


def http(port: int, method: str, path: str, body: bytes = b'', headers: bytes = b'') -> Answer:
    json = b'Content-Type: application/json\r\n' if body else b''
    return exchange(port, request(method, path, b'Connection: close\r\n' + json + headers, body))[0]


MESSAGE = b'{"role":"user","content":"hi"}'


def _post(headers: bytes, body: bytes = MESSAGE) -> bytes:
    return b'POST %s/p/messages HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n%s\r\n%s' % (
        API.encode(),
        AUTH,
        headers,
        body,
    )


def _get(line: bytes, headers: bytes = b'') -> bytes:
    return line + b'\r\nHost: x\r\n' + AUTH + headers + b'\r\n'


_CL = b'Content-Length: %d\r\n' % len(MESSAGE)
_S = SECRET.encode()
BAD = 'bad_request'
BIG = 'header_too_large'
_TE = b'Transfer-Encoding: chunked\r\n'
PARSER_ERRORS: dict[str, tuple[bytes, int, str]] = {
    # header bytes llhttp refuses, the API key among them
    'NUL in a header': (_get(b'GET /healthz HTTP/1.1', b'Authorization: Bearer %s\x00\r\n' % _S), 400, BAD),
    'CR in a header': (_get(b'GET /healthz HTTP/1.1', b'X-Key: %s\rX\r\n' % _S), 400, BAD),
    'control byte in a header': (_get(b'GET /healthz HTTP/1.1', b'X-Key: %s\x01\r\n' % _S), 400, BAD),
    'DEL in a header': (_get(b'GET /healthz HTTP/1.1', b'X-Key: %s\x7f\r\n' % _S), 400, BAD),
    'space in a header name': (_get(b'GET /healthz HTTP/1.1', b'Bad Header: %s\r\n' % _S), 400, BAD),
    'header without a colon': (_get(b'GET /healthz HTTP/1.1', b'NoColon%s\r\n' % _S), 400, BAD),
    'space before the colon': (_get(b'GET /healthz HTTP/1.1', b'X-Key : %s\r\n' % _S), 400, BAD),
    'empty header name': (_get(b'GET /healthz HTTP/1.1', b': %s\r\n' % _S), 400, BAD),
    'folded header': (_get(b'GET /healthz HTTP/1.1', b'X-Key: a\r\n %s\r\n' % _S), 400, BAD),
    'non-ASCII header name': (_get(b'GET /healthz HTTP/1.1', b'X-\xc3\xa9: %s\r\n' % _S), 400, BAD),
    'bare LF line ends': (b'GET /healthz HTTP/1.1\nHost: x\nX-Key: %s\n\n' % _S, 400, BAD),
    'Host twice': (_get(b'GET /healthz HTTP/1.1', b'Host: y\r\n'), 400, BAD),
    # sizes
    '10,000 headers': (_get(b'GET /healthz HTTP/1.1', b''.join(b'X-H%d: k\r\n' % n for n in range(10_000))), 431, BIG),
    '33 KB header': (_get(b'GET /healthz HTTP/1.1', b'X-Long: %s%s\r\n' % (_S, b'a' * 33_000)), 431, BIG),
    '33 KB header name': (_get(b'GET /healthz HTTP/1.1', b'X-%s: %s\r\n' % (b'a' * 33_000, _S)), 431, BIG),
    '1 MB query': (_get(b'GET /healthz?q=%s HTTP/1.1' % (b'a' * 1_000_000)), 414, 'uri_too_long'),
    '40 KB method': (_get(b'G' * 40_000 + b' /healthz HTTP/1.1'), 400, BAD),
    # the request line
    'HTTP/1.2': (_get(b'GET /healthz HTTP/1.2'), 505, 'http_version_not_supported'),
    'HTTP/2.0 in a request line': (_get(b'GET /healthz HTTP/2.0'), 505, 'http_version_not_supported'),
    'HTTP/0.9': (b'GET /healthz\r\n\r\n', 505, 'http_version_not_supported'),
    'not HTTP/': (_get(b'GET /healthz HTTX/1.1'), 400, BAD),
    'HTTP/2 preface': (b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, BAD),
    'TLS client hello': (bytes.fromhex('16030100a5010000a10303') + b'\x00' * 40, 400, BAD),
    'invalid method': (_get(b'G@T /healthz HTTP/1.1'), 400, BAD),
    'lower-case method': (_get(b'get /healthz HTTP/1.1'), 400, BAD),
    'binary garbage': (b'\xff\xfe\xfd\r\n\r\n', 400, BAD),
    'OPTIONS *': (_get(b'OPTIONS * HTTP/1.1'), 400, BAD),
    'CONNECT': (_get(b'CONNECT example.com:443 HTTP/1.1'), 400, BAD),
    'target without /': (_get(b'GET healthz HTTP/1.1'), 400, BAD),
    'NUL in the path': (_get(b'GET /heal\x00thz HTTP/1.1'), 400, BAD),
    'space in the path': (_get(b'GET /heal thz HTTP/1.1'), 400, BAD),
    'non-ASCII path': (_get(b'GET /heal\xffthz HTTP/1.1'), 400, BAD),
    # framing of the body
    'Content-Length and Transfer-Encoding': (_post(b'Content-Length: 5\r\n' + _TE, b'0\r\n\r\n'), 400, BAD),
    'Content-Length not a number': (_post(b'Content-Length: %s\r\n' % _S), 400, BAD),
    'negative Content-Length': (_post(b'Content-Length: -1\r\n'), 400, BAD),
    'Content-Length with +': (_post(b'Content-Length: +30\r\n'), 400, BAD),
    'Content-Length overflow': (_post(b'Content-Length: 99999999999999999999999\r\n'), 400, BAD),
    'two Content-Lengths': (_post(b'Content-Length: 30\r\nContent-Length: 31\r\n'), 400, BAD),
    'Content-Length list': (_post(b'Content-Length: 30, 30\r\n'), 400, BAD),
    'unknown Transfer-Encoding': (_post(b'Transfer-Encoding: %s\r\n' % _S), 400, BAD),
    'chunked twice': (_post(b'Transfer-Encoding: chunked, chunked\r\n', b'0\r\n\r\n'), 400, BAD),
    'bad chunk size': (_post(b'Transfer-Encoding: chunked\r\n', b'zz\r\n%s\r\n0\r\n\r\n' % _S), 400, BAD),
    'chunk without CRLF': (_post(b'Transfer-Encoding: chunked\r\n', b'2\r\nabXX0\r\n\r\n'), 400, BAD),
    'NUL in a chunk extension': (_post(b'Transfer-Encoding: chunked\r\n', b'1;\x00\r\na\r\n0\r\n\r\n'), 400, BAD),
    'malformed trailer': (_post(b'Transfer-Encoding: chunked\r\n', b'0\r\nBad Trailer %s\r\n\r\n' % _S), 400, BAD),
    # what the head asks for
    'Content-Encoding: br': (_post(b'Content-Encoding: br\r\n' + _CL), 415, 'unsupported_content_encoding'),
    'Content-Encoding: zstd': (_post(b'Content-Encoding: zstd\r\n' + _CL), 415, 'unsupported_content_encoding'),
    'Content-Encoding: gzip': (_post(b'Content-Encoding: gzip\r\n' + _CL), 415, 'unsupported_content_encoding'),
    'unknown Content-Encoding': (_post(b'Content-Encoding: %s\r\n' % _S + _CL), 415, 'unsupported_content_encoding'),
    'Expect: 200-ok': (_post(b'Expect: 200-ok\r\n' + _CL), 417, 'expectation_failed'),
    'Expect with the key': (_post(b'Expect: %s\r\n' % _S + _CL), 417, 'expectation_failed'),
    'Content-Length over the body limit': (_post(b'Content-Length: 1048577\r\n', b''), 413, 'body_too_large'),
}  # fmt: skip


@pytest.mark.parametrize('name', PARSER_ERRORS)
def test_what_aiohttp_would_answer_itself_is_our_json_error_without_the_clients_bytes(quick: Served, name: str) -> None:
    data, status, code = PARSER_ERRORS[name]
    answer, raw = exchange(quick.port, data)
    assert (answer.status, answer.error()['code']) == (status, code), answer
    assert re.fullmatch('[0-9a-f]{32}', answer.headers['x-request-id'])
    assert SECRET.encode() not in raw
    assert 'server' not in answer.headers
    assert answer.headers.get('connection') != 'keep-alive'  # and the server closed: read_until_closed returned


def test_parser_errors_are_logged_as_rate_limited_warnings_without_header_values(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        start = time.monotonic()
        for name in ('NUL in a header', 'space in a header name', 'Expect with the key', '33 KB header') * 10:
            assert exchange(served.port, PARSER_ERRORS[name][0])[0].status >= 400
        elapsed = time.monotonic() - start
        assert http(served.port, 'GET', '/healthz').status == 200  # the log lines before it are written
        log = served.log_text()
    assert SECRET not in log
    assert 'Traceback' not in log
    assert ' ERROR ' not in log
    lines = [line for line in log.splitlines() if 'memsvc.edge' in line]
    assert 1 <= len(lines) <= 1 + elapsed / edge.WARNING_INTERVAL_SECONDS, lines
    assert all(' WARNING ' in line for line in lines)


def test_no_response_names_the_server_software(quick: Served) -> None:
    for answer in (
        http(quick.port, 'GET', '/healthz'),
        http(quick.port, 'GET', f'{API}/nope'),
        exchange(quick.port, PARSER_ERRORS['NUL in a header'][0])[0],
    ):
        assert 'server' not in answer.headers, answer.headers


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(quick: Served) -> None:
    with connect(quick.port) as sock:
        send(sock, _post(b'Content-Length: %d\r\n' % (1024 * 1024 + 1), b''))  # the head only: no body follows
        answer = parse(read_until_closed(sock))
    assert (answer.status, answer.error()['code']) == (413, 'body_too_large')


def test_a_head_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed(quick: Served) -> None:
    with connect(quick.port) as sock:
        send(sock, b'GET /healthz HTTP/1.1\r\nHo')
        answer = parse(read_until_closed(sock))
    assert (answer.status, answer.error()['code']) == (408, 'request_timeout')
    assert 'MEMSVC_HEADER_TIMEOUT_SECONDS' in answer.error()['message']


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick: Served) -> None:
    with connect(quick.port) as sock:
        assert read_until_closed(sock) == b''


def test_the_head_deadline_applies_to_each_request_of_a_kept_alive_connection(quick: Served) -> None:
    with connect(quick.port) as sock:
        send(sock, b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
        assert parse(sock.recv(65536)).status == 200
        send(sock, b'GET /heal')
        answer = parse(read_until_closed(sock))
    assert (answer.status, answer.error()['code']) == (408, 'request_timeout')


@pytest.mark.parametrize(
    'start',
    [
        pytest.param(_post(b'Content-Length: 30\r\n', b'{"role"'), id='slow body'),
        pytest.param(_post(b'Transfer-Encoding: chunked\r\n', b'5\r\n{"rol\r\n'), id='chunks without an end'),
    ],
)
def test_a_body_that_does_not_arrive_in_time_is_answered_408(quick: Served, start: bytes) -> None:
    with connect(quick.port) as sock:
        send(sock, start)
        answer = parse(read_until_closed(sock))
    assert (answer.status, answer.error()['code']) == (408, 'request_timeout')
    assert 'MEMSVC_BODY_TIMEOUT_SECONDS' in answer.error()['message']
    assert answer.headers['x-request-id']


def test_a_malformed_chunk_after_the_head_is_one_json_400(quick: Served) -> None:
    with connect(quick.port) as sock:
        send(sock, _post(b'Transfer-Encoding: chunked\r\n', b''))
        assert http(quick.port, 'GET', '/healthz').status == 200  # the head has been read meanwhile
        send(sock, b'zz\r\n')
        raw = read_until_closed(sock)
    answer = parse(raw)
    assert (answer.status, answer.error()['code']) == (400, 'bad_request')
    assert raw.count(b'HTTP/1.') == 1


def test_a_handler_that_takes_longer_than_the_deadlines_is_not_cut_off(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The deadlines are on receiving a request: one that waits for a stopped Redis longer than them still
    gets its answer. (The second connection's 408 shows that the deadline has passed meanwhile.)"""
    env = {
        'MEMORY_TYPE': 'redis',
        'REDIS_URL': redis_server.url,
        'MEMSVC_KEY_PREFIX': f'edge-{free_port()}',
        'MEMSVC_REDIS_SOCKET_TIMEOUT': '60',
        'MEMSVC_HEADER_TIMEOUT_SECONDS': '0.5',
        'MEMSVC_BODY_TIMEOUT_SECONDS': '0.5',
    }
    with serve(tmp_path, **env) as served:
        assert http(served.port, 'POST', f'{API}/slow/messages', MESSAGE).status == 201
        redis_server.pause()
        try:
            with connect(served.port) as waiting:
                send(waiting, request('POST', f'{API}/slow/messages', b'Content-Type: application/json\r\n', MESSAGE))
                with connect(served.port) as late:
                    send(late, b'GET /healthz HTTP/1.1\r\n')
                    assert parse(read_until_closed(late)).status == 408
                redis_server.resume()
                answer = parse(waiting.recv(65536))
        finally:
            redis_server.resume()
    assert answer.status == 201


@pytest.fixture(scope='module')
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp('capped'), MEMSVC_MAX_CONNECTIONS='4') as served:
        yield served


def _kept_open(port: int) -> socket.socket:
    """A connection the server has accepted and holds (it answered one request on it)."""
    sock = connect(port)
    sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
    assert sock.recv(65536).startswith(b'HTTP/1.1 200 ')
    return sock


def test_a_connection_past_the_bound_is_answered_503_at_once(capped: Served) -> None:
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(_kept_open(capped.port)) for _ in range(4)]
        with connect(capped.port) as extra:  # sends nothing: the answer comes before any request
            answer = parse(read_until_closed(extra))
        assert (answer.status, answer.error()['code']) == (503, 'too_many_connections')
        assert answer.headers['retry-after'] == '1'
        assert 'MEMSVC_MAX_CONNECTIONS' in answer.error()['message']
        assert re.fullmatch('[0-9a-f]{32}', answer.headers['x-request-id'])
        with connect(capped.port) as extra:  # a client that sends its request at once gets the same answer
            send(extra, b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            assert parse(read_until_closed(extra)).status == 503
        held.pop().close()
        deadline = time.monotonic() + WAIT
        while http(capped.port, 'GET', '/healthz').status != 200:  # once the server has seen the close
            assert time.monotonic() < deadline, 'a closed connection did not free its place'


def _raise_descriptor_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, f'this test needs {wanted} descriptors (ulimit -Hn)'
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


SLOW = 500


def test_a_normal_client_is_answered_quickly_while_500_slow_connections_are_open(tmp_path: Path) -> None:
    _raise_descriptor_limit(SLOW + 200)  # the server process inherits it, and raises its own if need be
    env = {'MEMSVC_MAX_CONNECTIONS': str(SLOW + 50), 'MEMSVC_HEADER_TIMEOUT_SECONDS': '120'}
    with serve(tmp_path, **env) as served, contextlib.ExitStack() as stack:
        slow = []
        for _ in range(SLOW):
            sock = stack.enter_context(connect(served.port))
            sock.sendall(b'GET /healthz HTTP/1.1\r\nHo')
            slow.append(sock)
        times = []
        for n in range(21):
            start = time.perf_counter()
            answer = http(served.port, 'POST', f'{API}/busy/messages', b'{"role":"user","content":"%d"}' % n)
            times.append(time.perf_counter() - start)
            assert answer.status == 201
        assert statistics.median(times) < 0.1, sorted(times)
        for sock in slow:  # every slow connection was held open, and is answered once its head is complete
            sock.sendall(b'st: x\r\nConnection: close\r\n\r\n')
        for sock in slow:
            assert read_until_closed(sock).startswith(b'HTTP/1.1 200 ')


def test_an_explicit_bound_that_does_not_fit_the_descriptor_limit_stops_the_start() -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    result = subprocess.run(
        [sys.executable, '-m', 'memsvc', 'serve', '--port', str(free_port())],
        env=clean_env(MEMSVC_MAX_CONNECTIONS='1000'),
        preexec_fn=low_limit,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert 'MEMSVC_MAX_CONNECTIONS' in lines[0]
    assert 'ulimit -n' in lines[0]


def test_without_a_bound_the_descriptor_limit_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: dict[str, Any] = {'now': (300, 300)}
    monkeypatch.setattr(resource, 'getrlimit', lambda kind: limits['now'])
    monkeypatch.setattr(resource, 'setrlimit', lambda kind, value: limits.update(now=value))
    reserve = edge.FD_RESERVE + 64
    assert edge.max_connections(Settings()) == 300 - reserve
    assert edge.max_connections(Settings(max_connections=20)) == 20
    limits['now'] = (300, 100_000)  # the soft limit is raised as far as needed
    assert edge.max_connections(Settings()) == edge.DEFAULT_MAX_CONNECTIONS
    assert limits['now'] == (edge.DEFAULT_MAX_CONNECTIONS + reserve, 100_000)


def test_the_aiohttp_internals_the_edge_relies_on() -> None:
    """memsvc/edge.py reaches into these; a new aiohttp that moves them must fail here, not in production."""
    assert inspect.signature(web.Application._make_request).parameters['_cls'].default is web.Request
    assert [field.name for field in attr.fields(_ErrInfo)] == ['status', 'exc', 'message']
    for name in (
        '_messages',
        '_request_count',
        '_waiter',
        '_current_request',
        '_lingering_time',
        '_request_in_progress',
    ):
        assert name in RequestHandler.__slots__, name
    copied = hashlib.sha256(inspect.getsource(RequestHandler.data_received).encode()).hexdigest()
    assert copied == '1ee57ebe052e6c80ced26c96e4ccb1223172e1d55afba460353c5e414914d3f6', (
        'aiohttp changed RequestHandler.data_received: bring EdgeProtocol.data_received, a copy of it, up to date'
    )
    source = inspect.getsource(RequestHandler.start)
    assert 'self._make_error_handler(message)' in source  # queued _ErrInfo entries reach handle_error
    assert 'not self._force_close and lingering_time' in source  # a zero lingering time skips reading the rest
    assert inspect.signature(web.Server.__init__).parameters.keys() >= {'handler', 'request_factory', 'loop'}


def _rss_bytes(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS')


def test_clients_that_do_not_read_a_large_answer_do_not_hold_it_in_memory(quick: Served) -> None:
    """10 sessions of 4 messages of 100,000 characters make a 4 MB listing, over MEMSVC_MAX_RESPONSE_BYTES
    (2 MiB here): 10 clients that ask for it and do not read get a short 400 each, so the server holds
    nothing for them (written out in full, the answers would pin about 40 MB)."""
    content = {'role': 'user', 'content': 'x' * 100_000}
    for n in range(10):
        assert http(quick.port, 'POST', f'{API}/big-{n}/messages', orjson.dumps([content] * 4)).status == 201
    before = _rss_bytes(quick.process.pid)
    with contextlib.ExitStack() as stack:
        answers = []
        for _ in range(10):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stack.enter_context(sock)
            sock.settimeout(WAIT)
            sock.connect(('127.0.0.1', quick.port))
            sock.sendall(request('GET', f'{API}?limit=1000'))
            answers.append(sock.recv(4096))  # the start of the answer only
        grown = _rss_bytes(quick.process.pid) - before
    assert grown < 10 * 1024 * 1024, grown
    for raw in answers:
        answer = parse(raw)
        assert (answer.status, answer.error()['code']) == (400, 'response_too_large')
        assert 'include_messages=false' in answer.error()['message']
    assert http(quick.port, 'GET', f'{API}?limit=1000&include_messages=false').status == 200
    assert http(quick.port, 'GET', f'{API}?limit=2').status == 200
    too_many = http(quick.port, 'GET', f'{API}/big-0/messages?limit=10000')  # one session: 400 KB, under it
    assert too_many.status == 200


@pytest.mark.parametrize('session_id', ['.', '..', '%2E', '%2e%2E'])
@pytest.mark.parametrize(
    ('method', 'path'),
    [
        ('POST', '/{}/messages'),
        ('GET', '/{}/messages'),
        ('DELETE', '/{}/messages'),
        ('GET', '/{}'),
        ('PATCH', '/{}'),
        ('DELETE', '/{}'),
        ('GET', '/{}/search?q=x'),
    ],
)
def test_dot_segments_are_not_session_ids(quick: Served, session_id: str, method: str, path: str) -> None:
    """Clients that normalise URLs (curl, aiohttp's) could never reach a session named . or .."""
    answer = http(quick.port, method, API + path.format(session_id), b'{"metadata":{}}' if method != 'GET' else b'')
    assert (answer.status, answer.error()['code']) == (400, 'invalid_session_id')


@pytest.mark.parametrize('session_id', ['.', '..'])
def test_a_session_cannot_be_created_as_a_dot_segment(quick: Served, session_id: str) -> None:
    answer = http(quick.port, 'POST', API, orjson.dumps({'id': session_id}))
    assert (answer.status, answer.error()['code']) == (400, 'invalid_session_id')
    assert http(quick.port, 'POST', f'{API}/.../messages', MESSAGE).status == 201  # three dots are an id


def test_a_client_that_takes_none_of_its_answer_is_dropped_with_it(tmp_path: Path) -> None:
    """An answer under the size bound that the client does not read is held only until
    MEMSVC_SEND_TIMEOUT_SECONDS pass without the client taking any of it. (8 MB: more than the kernel's send
    buffer takes, at most 4 MiB on Linux, so the rest waits in the process.)"""
    content = {'role': 'user', 'content': 'y' * 100_000}
    with serve(tmp_path, MEMSVC_SEND_TIMEOUT_SECONDS='0.5') as served, socket.socket() as sock:
        for _ in range(20):
            assert http(served.port, 'POST', f'{API}/stall/messages', orjson.dumps([content] * 4)).status == 201
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(('127.0.0.1', served.port))
        sock.sendall(request('GET', f'{API}/stall/messages'))  # never read while it is sent
        deadline = time.monotonic() + WAIT
        while 'dropped a connection' not in served.log_text():
            assert time.monotonic() < deadline, 'the server kept the answer of a client that did not read it'
            time.sleep(0.05)
        received = read_until_closed(sock)
        assert http(served.port, 'GET', '/healthz').status == 200
        assert 'Traceback' not in served.log_text()
    assert received.startswith(b'HTTP/1.1 200 ')
    assert len(received) < 8_000_000  # the rest was dropped with the connection
