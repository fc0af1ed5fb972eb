"""NDJSON in: a request body read one line at a time, each line parsed as it arrives, none held whole unless it must.

A line of at most `whole` bytes (1 MiB) is read whole and parsed in one go. A longer one (a session with many
messages) is parsed in pieces as it arrives, so that the import holds about `chunk` bytes of it at a time whatever its
length, and no step parses more than that: first its fields before `messages` (the head), then its messages a run at
a time. A piece ends just before a message that begins with its id and role, `},{"id":7,"role":"`, as the export
writes every message; a cut that falls inside a message (that text in a list within it, e.g. in its metadata) leaves a
piece that ends early, which orjson reports as ending early (`unexpected end of data` at its last byte), and the
piece runs on to the next cut. Any other parse error is the line's. So a long line needs `messages` as its last field,
as the export writes it: one whose head is not found in its first `whole` bytes is held whole (up to the per-line
limit) and parsed in one go, and one whose messages do not begin with their ids is parsed at its end, in one piece.

Every line counts against the per-line limit: a line over it is refused (`LineTooLong`) and skipped, and so is a line
that is not JSON (`MalformedLine`). Blank lines are skipped, but counted: errors name lines by their number in the file.
"""

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from memsvc.errors import MemsvcError

WHOLE_LINE_BYTES = 1024 * 1024
"""The longest line read whole."""
CHUNK_BYTES = 128 * 1024
"""About the most bytes of a long line's messages parsed in one step."""

_HEAD_END = b'"messages":['
_CUT = b'},{"id":'
_CUT_REST = re.compile(rb'[0-9]+,"role":"')


class LineRefused(MemsvcError):
    """A line that is not one the import takes; nothing of it is written."""


class MalformedLine(LineRefused):
    code = 'malformed_json'


class LineTooLong(LineRefused):
    code = 'line_too_long'

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the line is longer than {limit} bytes, the most a session can take under this server's limits "
            '(MEMSVC_MAX_IMPORT_LINE_BYTES)'
        )


def _malformed(exc: orjson.JSONDecodeError) -> MalformedLine:
    return MalformedLine(f'the line is not JSON: {exc.msg} at byte {exc.pos}')


def _ends_early(exc: orjson.JSONDecodeError, text: bytes) -> bool:
    return exc.pos >= len(text)


class Line:
    """One line: `head` is its object without its messages (`"messages": []` in their place, when it has them), or
    `fault` says why it is refused. `messages()` gives its messages, a run at a time, and may raise `LineRefused`."""

    def __init__(
        self,
        reader: 'LineReader',
        number: int,
        head: dict[str, Any] | None = None,
        messages: list[Any] | None = None,
        fault: LineRefused | None = None,
        size: int = 0,
    ) -> None:
        self.number, self.head, self.fault, self.size = number, head, fault, size
        self._reader, self._messages = reader, messages

    @property
    def whole(self) -> bool:
        """Whether the line is in memory, all of it (`size` bytes): it no longer needs the reader, which may go on
        to the next line. A long line's messages are read from the body as they are taken."""
        return self._messages is not None or self.fault is not None

    async def messages(self) -> AsyncIterator[list[Any]]:
        if self._messages is not None:  # a line read whole
            if self._messages:
                yield self._messages
            return
        async for piece in self._reader.pieces():
            yield piece


class LineReader:
    """Lines from `read` (e.g. `request.content.readany`: bytes as they arrive, b'' at the end), each at most
    `limit` bytes long."""

    def __init__(
        self,
        read: Callable[[], Awaitable[bytes]],
        limit: int,
        *,
        whole: int = WHOLE_LINE_BYTES,
        chunk: int = CHUNK_BYTES,
    ) -> None:
        self._read, self.limit, self._whole, self._chunk = read, limit, whole, chunk
        self._buf = bytearray()
        self._eof = False
        self._searched = 0
        """How far `_buf` is known to hold no newline."""
        self._number = 0
        self._streaming = False
        """A long line is being read: its rest is skipped before the next line."""
        self._taken = 0
        """Bytes of the long line being read that left `_buf` already."""

    async def next(self) -> Line | None:
        """The next line that is not blank; None at the end of the body."""
        if self._streaming:
            await self._skip_line()
        while True:
            newline = await self._newline(self._whole)
            if newline < 0 and not self._buf:
                return None
            self._number += 1
            if newline < 0 and not self._eof:  # longer than `whole`
                return await self._long_line()
            text = self._take(newline if newline >= 0 else len(self._buf))
            if text.strip():
                return self._whole_line(text)

    def _whole_line(self, text: bytes) -> Line:
        if len(text) > self.limit:
            return Line(self, self._number, fault=LineTooLong(self.limit))
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return Line(self, self._number, fault=_malformed(exc))
        if not isinstance(parsed, dict):
            return Line(self, self._number, fault=MalformedLine('a line holds one JSON object, one session'))
        messages = parsed.get('messages')
        if isinstance(messages, list):
            parsed['messages'] = []
            return Line(self, self._number, parsed, messages, size=len(text))
        return Line(self, self._number, parsed, [], size=len(text))

    async def _long_line(self) -> Line:
        """A line longer than `whole`: its head, found in its first `whole` bytes, and then its messages streamed;
        or, when no head is found there, the line read whole (up to the limit)."""
        buf = self._buf
        at = buf.find(_HEAD_END, 0, self._whole)
        while at >= 0:
            text = bytes(buf[:at]) + b'"messages":[]}'
            try:
                head = orjson.loads(text)
            except orjson.JSONDecodeError:
                at = buf.find(_HEAD_END, at + 1, self._whole)
                continue
            if isinstance(head, dict):
                del buf[: at + len(_HEAD_END)]
                self._searched = 0
                self._taken = at + len(_HEAD_END)
                self._streaming = True
                return Line(self, self._number, head)
            break
        newline = await self._newline(self.limit)
        if newline < 0 and not self._eof:
            self._streaming, self._taken = True, 0
            return Line(self, self._number, fault=LineTooLong(self.limit))
        return self._whole_line(self._take(newline if newline >= 0 else len(buf)))

    async def pieces(self) -> AsyncIterator[list[Any]]:
        """The rest of the long line being read, from its first message on, as lists of messages."""
        buf, tried = self._buf, 0
        while self._streaming:
            newline = buf.find(b'\n', self._searched)
            if newline >= 0 or self._eof:
                yield self._last_piece(newline if newline >= 0 else len(buf))
                return
            self._searched = len(buf)
            if len(buf) > self._chunk:
                cut, tried = self._cut(max(tried, self._chunk))
                if cut is not None:
                    tried = 0
                    yield cut
                    continue
            if self._taken + len(buf) > self.limit:
                raise LineTooLong(self.limit)
            await self._fill()

    def _cut(self, start: int) -> tuple[list[Any] | None, int]:
        """The messages before the first cut at or after `start` that parses, and where to look next time."""
        buf = self._buf
        at = buf.find(_CUT, start)
        while at >= 0:
            if not _CUT_REST.match(buf, at + len(_CUT)):
                if len(buf) - at < 64:  # the cut may be whole once more arrives
                    return None, at
                at = buf.find(_CUT, at + 1)
                continue
            text = b'[' + bytes(buf[: at + 1]) + b']'
            try:
                messages = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                if not _ends_early(exc, text):
                    raise _malformed(exc) from None
                at = buf.find(_CUT, at + 1)
                continue
            del buf[: at + 2]
            self._taken += at + 2
            self._searched = 0
            return messages, 0
        return None, max(len(buf) - len(_CUT), start)

    def _last_piece(self, end: int) -> list[Any]:
        """The messages up to the end of the line, which must close the list and the line's object: `]}`."""
        buf = self._buf
        if self._taken + end > self.limit:
            raise LineTooLong(self.limit)
        rest = bytes(buf[:end]).rstrip()
        self._streaming = False
        del buf[: end + 1]
        self._searched = 0
        if not rest.endswith(b'}') or not rest[:-1].rstrip().endswith(b']'):
            raise MalformedLine(
                'a line longer than 1 MiB must end with its messages, `…]}`, as the export writes it'
                if rest.endswith(b'}')
                else 'the line ends before its object does'
            )
        text = b'[' + rest[:-1].rstrip()
        try:
            messages = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise _malformed(exc) from None
        assert isinstance(messages, list)
        return messages

    async def _skip_line(self) -> None:
        """Read past the end of the long line being read."""
        while True:
            newline = self._buf.find(b'\n', self._searched)
            if newline >= 0:
                del self._buf[: newline + 1]
                break
            self._buf.clear()
            self._searched = 0
            if self._eof:
                break
            await self._fill()
        self._searched, self._streaming, self._taken = 0, False, 0

    async def _newline(self, upto: int) -> int:
        """The position of the first newline in the buffer, reading until there is one, the buffer holds more than
        `upto` bytes, or the body ends (then -1)."""
        while True:
            newline = self._buf.find(b'\n', self._searched)
            if newline >= 0:
                return newline
            self._searched = len(self._buf)
            if self._eof or len(self._buf) > upto:
                return -1
            await self._fill()

    def _take(self, end: int) -> bytes:
        """The buffer's first `end` bytes, and the newline after them, out of it."""
        text = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._searched = 0
        return text

    async def _fill(self) -> None:
        data = await self._read()
        if data:
            self._buf += data
        else:
            self._eof = True
