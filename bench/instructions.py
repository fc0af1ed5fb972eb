"""`python -m bench.instructions`: instructions per request, counted by callgrind, for A/B work on hot paths.

wrk's req/s on a shared VM moves between runs by more than the changes this is for; an instruction count
barely moves, so it shows a change of a few percent that a timed run cannot (bench/results/notes.md). This
feeds raw HTTP requests to the app's aiohttp request handler in this process, through 64 fake connections
with one request in flight on each (as wrk -c64), and runs that under `valgrind --tool=callgrind` twice (N
and 4N requests): the difference divided by 3N is the cost of one request, start-up excluded. Syscalls are
not counted, and instructions are not time (cache misses are not in them): use it to compare changes,
`make bench` to report speed.

    python -m bench.instructions append                 # memsvc on in_memory, one message per request
    python -m bench.instructions get20 --store redis    # needs REDIS_URL (default 127.0.0.1:6379)
    python -m bench.instructions context                # the context window (max_tokens 4000, openai) of 20
    python -m bench.instructions context --history 100000   # ... of one session of 100,000 messages
    python -m bench.instructions v1_list                # /v1 items, 20 newest first (compare with get20)
    python -m bench.instructions v1_pair                # /v1 items create of a pair (compare with pair)
    python -m bench.instructions append --ceiling       # the bare-aiohttp ceiling
"""

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
from typing import Any

from aiohttp import web

API = '/api/v1/chat/sessions'
CONNECTIONS = 64
CONTENT = (
    b'"Can you summarise the three main points of the report I sent this morning, and list the deadlines it mentions?"'
)
MESSAGE = b'{"role":"user","content":' + CONTENT + b'}'
V1_PAIR = (
    b'{"items":[' + MESSAGE + b',{"type":"message","role":"assistant","status":"completed","content":[{"type":'
    b'"output_text","text":' + CONTENT + b',"annotations":[]}]}]}'
)
"""The same two texts as `pair`, as the Agents SDK writes them: the user's a string, the answer as output_text."""
REQUESTS = {
    'append': lambda n: _post(f'{API}/s-{n}/messages', MESSAGE),
    'pair': lambda n: _post(f'{API}/s-{n}/messages', b'[' + MESSAGE + b',' + MESSAGE + b']'),
    'get20': lambda n: f'GET {API}/read-{n}/messages?limit=20 HTTP/1.1\r\nHost: x\r\n\r\n'.encode(),
    'get_session': lambda n: f'GET {API}/read-{n} HTTP/1.1\r\nHost: x\r\n\r\n'.encode(),
    'context': lambda n: f'GET {API}/read-{n}/context?max_tokens=4000 HTTP/1.1\r\nHost: x\r\n\r\n'.encode(),
    # OpenAI's Conversations API (memsvc.compat.openai) on the same sessions: as the SDKs ask, newest first, and a
    # user + assistant pair as the Agents SDK writes it (the user's text a string, the answer as output_text)
    'v1_list': lambda n: (
        f'GET /v1/conversations/read-{n}/items?limit=20&order=desc HTTP/1.1\r\nHost: x\r\n\r\n'.encode()
    ),
    'v1_pair': lambda n: _post(f'/v1/conversations/read-{n}/items', V1_PAIR),
}


def _post(path: str, body: bytes) -> bytes:
    head = f'POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n'
    return head.encode() + body


class _Connection(asyncio.Transport):
    """A client connection that sends its next request as soon as the answer to the last one is written."""

    def __init__(self, run: '_Run', request: bytes) -> None:
        super().__init__()
        self.run, self.request = run, request
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.run.answered(self, bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.write(b''.join(chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {'peername': ('127.0.0.1', 1), 'sockname': ('127.0.0.1', 2)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0


class _Run:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.left, self.in_flight = loop, 0, 0
        self.done: asyncio.Future[None] = loop.create_future()

    def send(self, connection: _Connection) -> None:
        if self.left > 0:
            self.left -= 1
            self.in_flight += 1
            connection.protocol.data_received(connection.request)

    def answered(self, connection: _Connection, data: bytes) -> None:
        if not re.match(rb'HTTP/1\.1 20[01] ', data):
            raise SystemExit(f'bench.instructions: unexpected answer {data[:200]!r}')
        self.in_flight -= 1
        if self.left == 0 and self.in_flight == 0:
            self.done.set_result(None)
        else:
            self.loop.call_soon(self.send, connection)

    async def requests(self, server: Any, requests: list[bytes], count: int) -> None:
        self.left, self.done = count, self.loop.create_future()
        connections = []
        for request in requests:
            connection = _Connection(self, request)
            connection.protocol = server()
            connection.protocol.connection_made(connection)
            connections.append(connection)
        for connection in connections:
            self.send(connection)
        await self.done


async def _serve(args: argparse.Namespace) -> None:
    runner: web.AppRunner
    if args.ceiling:
        from bench.ceiling import create_app as create_ceiling

        runner = web.AppRunner(create_ceiling(), access_log=None)
    else:
        from memsvc.app import create_app
        from memsvc.edge import EdgeRunner
        from memsvc.settings import Settings

        key_prefix = f'bench-instructions-{os.getpid()}'
        slow = {'redis_connect_timeout': 60, 'redis_pool_timeout': 60, 'redis_socket_timeout': 60}  # valgrind is slow
        batches = {'max_batch': 1000} if args.history else {}  # seeded 1,000 at a time
        settings = Settings(memory_type=args.store, key_prefix=key_prefix, log_level='WARNING', **slow, **batches)
        runner = EdgeRunner(create_app(settings), settings, 1000, access_log=None)  # as `memsvc serve` runs it
    await runner.setup()
    run = _Run(asyncio.get_running_loop())
    twenty = b'[' + b','.join([MESSAGE] * 20) + b']'
    await run.requests(runner.server, [_post(f'{API}/read-{n}/messages', twenty) for n in range(CONNECTIONS)], 64)
    requests = [REQUESTS[args.scenario](n) for n in range(CONNECTIONS)]
    if args.history:  # every connection reads one session of `history` messages, appended 1,000 at a time
        batch = b'[' + b','.join([MESSAGE] * 1000) + b']'
        seed = [_post(f'{API}/long/messages', batch)]
        for _ in range(args.history // 1000):
            await run.requests(runner.server, seed, 1)
        requests = [REQUESTS[args.scenario]('x').replace(b'/read-x/', b'/long/') for _ in range(CONNECTIONS)]
    await run.requests(runner.server, requests, 640)  # warm up
    await run.requests(runner.server, requests, args.count)
    await runner.cleanup()


def _instructions(args: argparse.Namespace, count: int) -> int:
    argv = [sys.executable, '-m', 'bench.instructions', args.scenario, '--store', args.store, '--count', str(count)]
    argv += ['--ceiling'] if args.ceiling else []
    argv += ['--history', str(args.history)] if args.history else []
    valgrind = ['valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null']
    done = subprocess.run([*valgrind, *argv, '--inside'], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'bench.instructions: the run under valgrind failed:\n{done.stderr[-3000:]}')
    out = done.stderr
    return int(re.findall(r'Collected : (\d+)', out)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog='python -m bench.instructions', description=(__doc__ or '').split('\n')[0])
    parser.add_argument('scenario', choices=sorted(REQUESTS))
    parser.add_argument('--store', default='in_memory', choices=['in_memory', 'redis'])
    parser.add_argument('--ceiling', action='store_true', help='count the bare-aiohttp ceiling instead')
    parser.add_argument('--count', type=int, default=640, help='N: the runs take N and 4N requests')
    parser.add_argument(
        '--history', type=int, default=0, help='read one session of this many messages (a multiple of 1,000)'
    )
    parser.add_argument('--inside', action='store_true', help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args()
    if args.inside:
        from memsvc.cli import GC_YOUNG_THRESHOLD, _new_loop

        if not args.ceiling:  # as `memsvc serve` does
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        loop = _new_loop()
        loop.run_until_complete(_serve(args))
        loop.close()
        return
    if args.store == 'redis' and not args.ceiling:
        # The first run against a Redis loads memsvc's scripts into it (NOSCRIPT, then SCRIPT LOAD), which later
        # runs do not pay: counted in the N run only, it would make the difference far too small.
        _instructions(args, args.count)
    low, high = _instructions(args, args.count), _instructions(args, 4 * args.count)
    name = 'ceiling' if args.ceiling else f'memsvc-{args.store}'
    print(f'{args.scenario} {name}: {(high - low) // (3 * args.count):,} instructions per request')


if __name__ == '__main__':
    main()
