"""NDJSON lines as the import reads them (`memsvc.lines`): whole or in pieces, any length in bounded memory, each
fault reported for its line and the next line read."""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from memsvc.lines import LineReader, LineRefused


def source(data: bytes, size: int = 7) -> Callable[[], Awaitable[bytes]]:
    """`data` in reads of `size` bytes, as a slow client sends it."""
    chunks = [data[n : n + size] for n in range(0, len(data), size)]

    async def read() -> bytes:
        return chunks.pop(0) if chunks else b''

    return read


async def read_all(data: bytes, **options: Any) -> list[tuple[int, Any, str | None]]:
    """(number, the line's head with its messages put back, or the fault's code) of every line."""
    reader = LineReader(source(data, options.pop('size', 7)), options.pop('limit', 10**9), **options)
    out: list[tuple[int, Any, str | None]] = []
    while (line := await reader.next()) is not None:
        if line.fault is not None:
            out.append((line.number, None, line.fault.code))
            continue
        try:
            messages = [message async for piece in line.messages() for message in piece]
        except LineRefused as exc:
            out.append((line.number, None, exc.code))
            continue
        assert line.head is not None
        out.append((line.number, {**line.head, 'messages': messages}, None))
    return out


def session(session_id: str, count: int, **extra: Any) -> dict[str, Any]:
    messages = [
        {'id': n, 'role': 'user', 'content': f'message {n} }},{{"id":{n}', **extra} for n in range(1, count + 1)
    ]
    return {'id': session_id, 'metadata': {'messages': [1]}, 'next_id': count + 1, 'messages': messages}


async def test_a_long_line_is_read_in_pieces_and_equals_the_line_read_whole() -> None:
    """Pieces of about 64 bytes; the metadata holds a `"messages":[` of its own, the contents a `},{"id":` and a
    message's metadata a list of objects that begin like messages: every false cut is found out."""
    tricky = {'metadata': {'refs': [{'id': 1, 'role': 'x'}, {'id': 2, 'role': 'y'}]}}
    lines = [session('long', 40, **tricky), session('short', 1), session('long2', 30)]
    data = b'\n'.join(orjson.dumps(line) for line in lines) + b'\n'
    assert len(orjson.dumps(lines[0])) > 1000
    assert await read_all(data, whole=256, chunk=64) == [(1, lines[0], None), (2, lines[1], None), (3, lines[2], None)]
    assert await read_all(data) == await read_all(data, whole=256, chunk=64), 'the same, read whole'


async def test_faults_are_reported_for_their_line_and_the_next_line_is_read() -> None:
    good = orjson.dumps(session('good', 3))
    long_first = orjson.dumps({'messages': session('x', 30)['messages'], 'id': 'x'})  # messages not last
    cut = orjson.dumps(session('cut', 30))[:-20]  # ends before its object does
    broken = orjson.dumps(session('broken', 30)).replace(b'"message 12', b'message 12', 1)
    data = b'\n'.join([good, b'', b'not json', long_first, cut, broken, b'[1]', good])
    found = await read_all(data, whole=256, chunk=64)
    assert [(number, code) for number, _, code in found] == [
        (1, None),
        (3, 'malformed_json'),
        (4, 'malformed_json'),
        (5, 'malformed_json'),
        (6, 'malformed_json'),
        (7, 'malformed_json'),
        (8, None),
    ], 'blank lines are counted, not reported'
    assert found[-1][1] == orjson.loads(good), 'the last line has no newline'


@pytest.mark.parametrize('whole', [256, 10**6])
async def test_a_line_over_the_limit_is_refused_and_skipped(whole: int) -> None:
    big, small = orjson.dumps(session('big', 40)), orjson.dumps(session('small', 1))
    found = await read_all(big + b'\n' + small, limit=len(big) - 1, whole=whole, chunk=64)
    assert [(number, code) for number, _, code in found] == [(1, 'line_too_long'), (2, None)]
