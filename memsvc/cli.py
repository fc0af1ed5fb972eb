"""The command line: `memsvc serve [--host] [--port] [--workers] [--memory-type]`, `memsvc export` / `memsvc
import` (`memsvc.transfer_cli`), clients of a running memsvc, and `memsvc reindex` (`memsvc.reindex`), which opens
the store as `serve` does.

Settings are read once here and passed down (to `serve` and `reindex`; the clients read none). `--workers N` (N > 1)
starts N processes that share one listening port through SO_REUSEPORT; the parent forwards SIGTERM/SIGINT to them and
exits 0 only when every worker drained and exited 0.
"""

import argparse
import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from types import FrameType
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from memsvc import __version__
from memsvc.errors import MemsvcError
from memsvc.logs import configure_logging
from memsvc.metrics import MULTIPROC_ENV, mark_process_dead
from memsvc.settings import Settings, describe_error, describe_value_error

log = logging.getLogger('memsvc')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='memsvc', description='Chat memory for LLM gateways, over HTTP.')
    parser.add_argument('--version', action='version', version=f'memsvc {__version__}')
    commands = parser.add_subparsers(dest='command', required=True)
    serve = commands.add_parser('serve', help='serve the HTTP API (settings from MEMSVC_* and the flags)')
    serve.add_argument('--host', help='address to listen on (MEMSVC_HOST, default 127.0.0.1)')
    serve.add_argument('--port', type=int, help='port to listen on (MEMSVC_PORT, default 8080)')
    serve.add_argument('--workers', type=int, help='processes sharing the port (MEMSVC_WORKERS, default 1)')
    serve.add_argument('--memory-type', choices=['in_memory', 'redis', 'chroma'], help='store (MEMORY_TYPE)')
    serve.add_argument('--access-log', action='store_true', default=None, help='log every request (MEMSVC_ACCESS_LOG)')
    export = commands.add_parser('export', help="write a memsvc's sessions (its API key's tenant) as NDJSON")
    export.add_argument('--url', required=True, help='the memsvc to read, e.g. http://127.0.0.1:8080')
    export.add_argument('--api-key', help="the tenant's API key, when the server has keys")
    export.add_argument('-o', '--output', help='the file to write (written whole, then renamed); default: stdout')
    export.add_argument(
        '--metadata',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help="only the sessions whose metadata has VALUE under KEY, an indexed key (the server's "
        'MEMSVC_INDEXED_METADATA), e.g. user_id=alice; several: all of them',
    )
    imported = commands.add_parser('import', help='write sessions from NDJSON (what export writes) into a memsvc')
    imported.add_argument('--url', required=True, help='the memsvc to write, e.g. http://127.0.0.1:8081')
    imported.add_argument('--api-key', help="the tenant's API key, when the server has keys")
    imported.add_argument(
        '--on-conflict',
        choices=['keep', 'replace'],
        default='keep',
        help='a session that exists and differs: keep it (default) or replace it',
    )
    imported.add_argument('file', help='the NDJSON file to read; - for stdin')
    reindex = commands.add_parser(
        'reindex',
        help='rebuild the metadata index from the sessions, after MEMSVC_INDEXED_METADATA changed (opens the store '
        'with the settings serve reads)',
    )
    reindex.add_argument('--memory-type', choices=['in_memory', 'redis', 'chroma'], help='store (MEMORY_TYPE)')
    reindex.add_argument(
        '--tenant',
        action='append',
        default=[],
        help="a tenant to reindex (repeatable); default: every tenant of the configured API keys, or 'default'",
    )
    return parser


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


GC_YOUNG_THRESHOLD = 7_000
"""Allocations between collections of the youngest generation (Python's default: 700). A request that waits
for Redis keeps its objects alive while others run, so at the default the young collections come often on
a Redis store and each traverses the objects of every request in flight; ten times the default makes them
rare (bench/results/notes.md)."""


async def _freeze_start_up_objects(app: web.Application) -> None:
    """The last start-up step: the objects made so far (modules, classes, functions, the app and its store)
    live as long as the process, so the cyclic collector's full passes need not visit them again."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run one server process until SIGTERM/SIGINT; return its exit status."""
    from memsvc import edge
    from memsvc.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        connections = edge.max_connections(settings)
    except ValueError as exc:
        print(f'memsvc: {describe_value_error(exc)}', file=sys.stderr)
        return 1
    app = create_app(settings)
    app.on_startup.append(_freeze_start_up_objects)
    try:
        edge.run(
            app,
            settings,
            connections,
            _new_loop(),
            reuse_port=reuse_port or None,
            access_log=logging.getLogger('aiohttp.access') if settings.access_log else None,
        )
    except MemsvcError as exc:
        print(f'memsvc: cannot start: {exc.message}', file=sys.stderr)
        return 1
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        print(f'memsvc: cannot listen on {settings.host}:{settings.port}: {reason}', file=sys.stderr)
        return 1
    return 0


def _worker(settings: Settings) -> None:
    sys.exit(serve(settings, reuse_port=True))


def serve_workers(settings: Settings) -> int:
    """Start `settings.workers` processes on one port; stop them all when one fails or on a signal.

    The workers share a directory for their metrics (`PROMETHEUS_MULTIPROC_DIR`, a fresh temporary one
    unless set), so that `/metrics` in any of them answers for all.
    """
    with contextlib.ExitStack() as stack:
        if MULTIPROC_ENV not in os.environ:
            os.environ[MULTIPROC_ENV] = stack.enter_context(tempfile.TemporaryDirectory(prefix='memsvc-metrics-'))
            stack.callback(os.environ.pop, MULTIPROC_ENV)
        return _run_workers(settings)


def _run_workers(settings: Settings) -> int:
    context = multiprocessing.get_context('spawn')
    workers = [
        context.Process(target=_worker, args=(settings,), name=f'memsvc-worker-{n}') for n in range(settings.workers)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                worker.terminate()  # SIGTERM: the worker drains in-flight requests and exits 0

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.start()
    log.info('memsvc %s: %d workers on http://%s:%d', __version__, settings.workers, settings.host, settings.port)
    status = 0
    pending = list(workers)
    while pending:
        multiprocessing.connection.wait([w.sentinel for w in pending])
        for worker in [w for w in pending if w.exitcode is not None]:
            pending.remove(worker)
            assert worker.pid is not None
            mark_process_dead(worker.pid)
            if worker.exitcode != 0:
                status = 1
                forward(signal.SIGTERM, None)
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ('export', 'import'):
        from memsvc import transfer_cli

        return transfer_cli.run(args)
    if args.command == 'reindex':
        from memsvc import reindex

        try:
            settings = Settings(**({} if args.memory_type is None else {'memory_type': args.memory_type}))
        except ValidationError as exc:
            print(f'memsvc: {describe_error(exc)}', file=sys.stderr)
            return 2
        return reindex.run(settings, args.tenant)
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            'host': args.host,
            'port': args.port,
            'workers': args.workers,
            'memory_type': args.memory_type,
            'access_log': args.access_log,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f'memsvc: {describe_error(exc)}', file=sys.stderr)
        return 2
    if settings.workers > 1:
        configure_logging(settings.log_level, settings.log_format)
        return serve_workers(settings)
    return serve(settings)
