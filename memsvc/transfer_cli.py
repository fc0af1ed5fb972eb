"""`memsvc export` and `memsvc import`: clients of a running memsvc's export and import (README, "Export and
import"), streamed both ways with aiohttp, so that neither holds more than a chunk of the data. On a terminal they
show a progress bar (tqdm, on stderr); otherwise a plain line every few seconds and one at the end.

`memsvc export` writes to a file named `<FILE>.partial` and renames it only once the whole export has arrived: a
file of that name is never a cut export (the server closes the connection early on a failure, which aiohttp reports).
Exit status: 0 when everything was exported, or every line imported or skipped; 1 otherwise (the reason on stderr).
"""

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

API = '/api/v1/chat'
CHUNK_BYTES = 256 * 1024
PLAIN_EVERY_SECONDS = 5.0
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)


class Progress:
    """Bytes and lines (sessions) so far: a tqdm bar on a terminal, plain lines to stderr otherwise."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.bytes, self.lines = what, 0, 0
        self._next = time.monotonic() + PLAIN_EVERY_SECONDS
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def add(self, data: bytes) -> None:
        self.bytes += len(data)
        self.lines += data.count(b'\n')
        if self._bar is not None:
            self._bar.update(len(data))
            self._bar.set_postfix(sessions=self.lines, refresh=False)
        elif time.monotonic() >= self._next:
            self._next = time.monotonic() + PLAIN_EVERY_SECONDS
            print(f'{self.what}: {self.lines} sessions, {self.bytes} bytes so far', file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _headers(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {'Authorization': f'Bearer {api_key}'}


def _refused(status: int, body: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
        error = orjson.loads(body)['error']
        return f'{status} {error["code"]}: {error["message"]}'
    return f'{status}: {body[:200].decode(errors="replace")}'


def filters_of(pairs: list[str]) -> list[tuple[str, str]]:
    """`--metadata KEY=VALUE` flags as the export's query (`metadata.KEY=VALUE`); ValueError for one without `=`."""
    query = []
    for pair in pairs:
        key, equals, value = pair.partition('=')
        if not equals or not key:
            raise ValueError(f'--metadata {pair!r}: give KEY=VALUE, e.g. user_id=alice')
        query.append((f'metadata.{key}', value))
    return query


async def export(url: str, api_key: str | None, target: IO[bytes], query: list[tuple[str, str]] | None = None) -> int:
    progress = Progress('export')
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f'{url.rstrip("/")}{API}/export', params=query or [], headers=_headers(api_key)) as response,
        ):
            if response.status != 200:
                print(f'memsvc export: {_refused(response.status, await response.read())}', file=sys.stderr)
                return 1
            async for data in response.content.iter_chunked(CHUNK_BYTES):
                target.write(data)
                progress.add(data)
            target.flush()
    except aiohttp.ClientError as exc:
        print(f'memsvc export: the export did not arrive whole ({type(exc).__name__}: {exc})', file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(f'memsvc export: {progress.lines} sessions, {progress.bytes} bytes', file=sys.stderr)
    return 0


async def _chunks(source: IO[bytes], progress: Progress) -> AsyncIterator[bytes]:
    while data := source.read(CHUNK_BYTES):
        progress.add(data)
        yield data


async def import_(url: str, api_key: str | None, source: IO[bytes], total: int | None, on_conflict: str) -> int:
    headers = {**_headers(api_key), 'Content-Type': 'application/x-ndjson'}
    progress = Progress('import', total)
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(
                f'{url.rstrip("/")}{API}/import',
                params={'on_conflict': on_conflict},
                data=_chunks(source, progress),
                headers=headers,
            ) as response,
        ):
            body = await response.read()
    except aiohttp.ClientError as exc:
        print(f'memsvc import: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    finally:
        progress.close()
    if response.status != 200:
        print(f'memsvc import: {_refused(response.status, body)}', file=sys.stderr)
        return 1
    result = orjson.loads(body)
    print(
        f'memsvc import: {result["imported"]} imported, {result["skipped"]} skipped (identical), '
        f'{result["conflicts"]} conflicts (left as they are), {result["failed"]} lines refused',
        file=sys.stderr,
    )
    for error in result['errors']:
        print(f'  line {error["line"]}: {error["code"]}: {error["message"]}', file=sys.stderr)
    return 0 if not result['failed'] and not result['conflicts'] else 1


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == 'export':
            try:
                query = filters_of(args.metadata)
            except ValueError as exc:
                print(f'memsvc export: {exc}', file=sys.stderr)
                return 2
            if args.output is None:
                return asyncio.run(export(args.url, args.api_key, sys.stdout.buffer, query))
            partial = Path(f'{args.output}.partial')
            with partial.open('wb') as target:
                status = asyncio.run(export(args.url, args.api_key, target, query))
            if status == 0:
                partial.replace(args.output)
            else:
                partial.unlink(missing_ok=True)
            return status
        if args.file == '-':
            return asyncio.run(import_(args.url, args.api_key, sys.stdin.buffer, None, args.on_conflict))
        with Path(args.file).open('rb') as source:
            total = os.fstat(source.fileno()).st_size
            return asyncio.run(import_(args.url, args.api_key, source, total, args.on_conflict))
    except OSError as exc:
        print(f'memsvc {args.command}: {exc}', file=sys.stderr)
        return 1
