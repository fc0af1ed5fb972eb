"""Import: NDJSON lines of sessions, as the export writes them, into the store, each session all or nothing.

Each line is checked with the rules and limits of the API (`models.SessionLine`: a session id, metadata within its
bounds, each message as an append checks it, with its id and timestamp), and also: ids ascend, below `next_id`; the
summary's `through_id` is an id given (below `next_id`; the message it names may have been deleted since); at most
`MEMSVC_MAX_MESSAGES_PER_SESSION` messages (a line is a whole session, never trimmed). A line that breaks a rule is
refused (`errors`, by its line number) and nothing of it is written: its messages go, checked and encoded a run at a
time (`BATCH`, with the event loop free in between), into the store's hidden copy (`Store.importing`), which one last
atomic step publishes, or drops.

What is stored is what an append would have stored: each message encoded again from its checked fields
(`models.encode_message`, `with_id`), timestamps in UTC, the metadata and summary likewise, and its token record
counted again. A line that memsvc exported is so stored byte for byte as it was, and an export of it is the same line.

A session whose id exists already is compared with the line, field by field and message by message, as it goes: the
same in every field, it is `skipped`; otherwise it is a `conflict` and left as it is, or, with `replace`, replaced whole
(`imported`). A session created while its line was being written is a conflict (the publish finds the id taken).
"""

import asyncio
import heapq
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
import pydantic
from pydantic import TypeAdapter

from memsvc.context import message_id, record
from memsvc.errors import InvalidInput, MemsvcError, SessionExists, SessionFull, ThroughIdNotStored
from memsvc.lines import Line as RawLine
from memsvc.lines import LineReader
from memsvc.models import (
    ImportResult,
    LineError,
    LineMessage,
    SessionLine,
    SessionRecord,
    encode_message,
    fork_origin,
    require_session_id,
    timestamp_length,
    with_id,
)
from memsvc.stores import gaps as ids
from memsvc.stores.base import ExportRead, SessionImage, Store
from memsvc.tokens import TokenCounter

BATCH: Final = 500
"""Messages checked, encoded, counted and written in one step."""
MAX_ERRORS: Final = 1000
"""Refused lines reported in the answer, the first ones (all are counted)."""
CONCURRENT_LINES: Final = 16
CONCURRENT_BYTES: Final = 4 * 1024 * 1024
"""At most so many lines read whole, of at most so many bytes in all, imported at once."""

_HEAD: TypeAdapter[SessionLine] = TypeAdapter(SessionLine)
_MESSAGES: TypeAdapter[list[LineMessage]] = TypeAdapter(list[LineMessage])
_NOT_STORED: Final = frozenset({'id', 'timestamp'})

Outcome = Literal['imported', 'skipped', 'conflicts']


def _invalid(exc: pydantic.ValidationError, prefix: str = '', offset: int = 0) -> InvalidInput:
    """A validation error as the API words it, its fields named in the line (`messages[7].content`)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:3]:
        loc = list(error['loc'])
        if prefix and loc and isinstance(loc[0], int):
            loc[0] += offset
        name = prefix
        for part in loc:
            name += f'[{part}]' if isinstance(part, int) else (f'.{part}' if name else str(part))
        problems.append(f'{name or "line"}: {error["msg"]}')
    return InvalidInput('', '; '.join(problems))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class _Messages:
    """A line's messages, checked and encoded `BATCH` at a time; once read to the end, its count and gaps."""

    def __init__(self, importer: 'Importer', line: RawLine, head: SessionLine) -> None:
        self._importer, self._line, self._next_id, self._id = importer, line, head['next_id'], head['id']
        summary = head.get('summary')
        self._through = None if summary is None else summary['through_id']
        self.count = 0
        self.first = self._next_id
        self.gaps: ids.Gaps = ()

    async def batches(self) -> AsyncIterator[tuple[list[bytes], list[int]]]:
        importer, last, gaps = self._importer, 0, []
        async for piece in self._line.messages():
            for start in range(0, len(piece), BATCH):
                try:
                    checked = _MESSAGES.validate_python(piece[start : start + BATCH])
                except pydantic.ValidationError as exc:
                    raise _invalid(exc, 'messages', self.count) from None
                stored, records = [], []
                for message in checked:
                    number, field = message['id'], f'messages[{self.count}]'
                    if number <= last or number >= self._next_id:
                        raise InvalidInput(f'{field}.id', f'ids ascend and stay below next_id; got {number}')
                    importer.check_message(message, field)
                    if last and number > last + 1:
                        gaps.append((last + 1, number))
                    elif not last:
                        self.first = number
                    fields = {key: value for key, value in message.items() if key not in _NOT_STORED}
                    moment = _utc(message['timestamp'])
                    stored.append(with_id(number, encode_message(fields, moment, field)))  # type: ignore[arg-type]
                    records.append(record(importer.counter, message, timestamp_length(moment)))
                    last = number
                    self.count += 1
                if importer.max_messages and self.count > importer.max_messages:
                    raise SessionFull(self._id, importer.max_messages)
                yield stored, records
                await asyncio.sleep(0)  # others' requests run between the steps of a long line
        if last and last + 1 < self._next_id:
            gaps.append((last + 1, self._next_id))
        self.gaps = tuple(gaps)
        if self._through is not None and self._through >= self._next_id:  # (it may name a message deleted since)
            raise ThroughIdNotStored(self._id, self._through)


class Importer:
    """One import's run over a tenant's sessions: `run` reads every line and answers the counts."""

    def __init__(
        self,
        store: Store,
        tenant: str,
        counter: TokenCounter,
        check_metadata: Callable[[dict[str, Any], str], bytes],
        *,
        max_content: int,
        max_messages: int,
        replace: bool,
        replaced: Callable[[str], None],
    ) -> None:
        self._store, self._tenant, self.counter = store, tenant, counter
        self._check_metadata, self._max_content, self.max_messages = check_metadata, max_content, max_messages
        self._replace, self._replaced = replace, replaced

    async def run(self, reader: LineReader) -> ImportResult:
        """Lines read whole are imported up to `CONCURRENT_LINES` (and `CONCURRENT_BYTES`) at a time, so that one
        line's store round trips overlap the next ones' (on Redis they go out in one pipeline); a long line, whose
        messages are read from the body as it is written, is imported alone. A line whose session id is in flight
        waits for it, so the outcome is what importing the lines one after another gives."""
        window = _Window()
        try:
            while (line := await reader.next()) is not None:
                await window.make_room(line)
                window.start(line, self._import(line))
                if not line.whole:  # the reader is needed by this line until it ends
                    await window.wait(window.running, asyncio.ALL_COMPLETED)
            await window.wait(window.running, asyncio.ALL_COMPLETED)
        finally:
            await window.settle()
        return window.result()

    def check_message(self, message: LineMessage, field: str) -> None:
        if len(message['content']) > self._max_content:
            raise InvalidInput(
                f'{field}.content', f'at most {self._max_content} characters, got {len(message["content"])}'
            )
        metadata = message.get('metadata')
        if metadata is not None:
            self._check_metadata(metadata, f'{field}.metadata')

    def _image(self, line: RawLine) -> tuple[SessionLine, SessionImage]:
        if line.fault is not None:
            raise line.fault
        try:
            head = _HEAD.validate_python(line.head)
        except pydantic.ValidationError as exc:
            raise _invalid(exc) from None
        session_id = require_session_id(head['id'])
        if head['updated_at'] < head['created_at']:
            raise InvalidInput('updated_at', 'is before created_at')
        summary = head.get('summary')
        text = b''
        if summary is not None:
            if len(summary['content']) > self._max_content:
                raise InvalidInput('summary.content', f'at most {self._max_content} characters')
            fields = {**summary, 'updated_at': _utc(summary['updated_at'])}
            text = orjson.dumps(fields, option=orjson.OPT_UTC_Z)
        origin = head.get('forked_from')
        forked_from = (
            b'' if origin is None else fork_origin(require_session_id(origin['session_id']), origin['message_id'])
        )
        created_at, updated_at = _utc(head['created_at']), _utc(head['updated_at'])
        metadata = self._check_metadata(head['metadata'], 'metadata')
        image = SessionImage(
            SessionRecord(session_id, created_at, updated_at, metadata, 0, forked_from), head['next_id'], text
        )
        return head, image

    async def _import(self, line: RawLine) -> Outcome:
        head, image = self._image(line)
        session_id = image.record.id
        messages = _Messages(self, line, head)
        existing = await self._store.read_export(self._tenant, session_id, 0, 0, 0)
        if existing is not None and not self._replace:
            return await self._compare(existing, image, messages)
        async with self._store.importing(self._tenant, image, replace=self._replace) as writer:
            async for stored, records in messages.batches():
                await writer.write(stored, records)
            try:
                await writer.publish(messages.gaps)
            except SessionExists:
                return 'conflicts'  # created while the line was being written
        if existing is not None:
            self._replaced(session_id)
        return 'imported'

    async def _compare(self, existing: ExportRead, image: SessionImage, messages: _Messages) -> Outcome:
        """Read the line to its end (its errors come first), comparing it with the stored session as it goes."""
        same = _same(existing.image, image)
        after = 0
        async for stored, _ in messages.batches():
            if not same:
                continue
            read = await self._store.read_export(
                self._tenant, image.record.id, after, len(stored), sum(map(len, stored)) + len(stored)
            )
            same = read is not None and read.image.record.created_at == image.record.created_at
            same = same and read is not None and list(read.messages) == stored
            after = message_id(stored[-1])
        if same and messages.count == existing.held:
            return 'skipped'
        return 'conflicts'


class _Window:
    """The lines being imported, and the counts of those that ended."""

    def __init__(self) -> None:
        self.running: dict[asyncio.Task[Outcome], RawLine] = {}
        self._by_id: dict[str, asyncio.Task[Outcome]] = {}
        self._counts: dict[Outcome, int] = {'imported': 0, 'skipped': 0, 'conflicts': 0}
        self._errors: list[tuple[int, LineError]] = []  # a max-heap by line number (negated): the first MAX_ERRORS
        self._failed = 0

    async def make_room(self, line: RawLine) -> None:
        """Return once `line` may start: no line of its session running, and for a line read whole, room."""
        session_id = _session_id(line)
        if session_id in self._by_id:
            await self.wait([self._by_id[session_id]], asyncio.ALL_COMPLETED)
        if not line.whole:
            await self.wait(self.running, asyncio.ALL_COMPLETED)
        while self.running and (
            len(self.running) >= CONCURRENT_LINES
            or sum(held.size for held in self.running.values()) + line.size > CONCURRENT_BYTES
        ):
            await self.wait(self.running, asyncio.FIRST_COMPLETED)

    def start(self, line: RawLine, work: Coroutine[Any, Any, Outcome]) -> None:
        task = asyncio.ensure_future(work)
        self.running[task] = line
        self._by_id[_session_id(line)] = task

    async def wait(self, tasks: Collection[asyncio.Task[Outcome]], when: str) -> None:
        """Wait for `tasks` as `asyncio.wait` does and count those that ended; a backend error is raised."""
        if not tasks:
            return
        finished, _ = await asyncio.wait(list(tasks), return_when=when)
        for task in finished:
            self._ended(task)

    def _ended(self, task: asyncio.Task[Outcome]) -> None:
        line = self.running.pop(task)
        session_id = _session_id(line)
        if self._by_id.get(session_id) is task:
            del self._by_id[session_id]
        try:
            self._counts[task.result()] += 1
        except MemsvcError as exc:
            if exc.code == 'backend_unavailable':
                raise
            self._failed += 1
            entry: LineError = {'line': line.number, 'code': exc.code, 'message': exc.message}
            if len(self._errors) < MAX_ERRORS:
                heapq.heappush(self._errors, (-line.number, entry))
            elif line.number < -self._errors[0][0]:
                heapq.heapreplace(self._errors, (-line.number, entry))

    async def settle(self) -> None:
        """After a backend error: let the lines in flight end as they end (each all or nothing; neither their
        failures nor their counts are in the 503 that answers). They are not cancelled: a cancelled write's
        command may still reach Redis after the clean-up that follows it, and leave a hidden copy until its TTL."""
        if self.running:
            await asyncio.wait(self.running)
            for task in self.running:
                if not task.cancelled():
                    task.exception()  # retrieved: the answer is the error already raised

    def result(self) -> ImportResult:
        return {
            'imported': self._counts['imported'],
            'skipped': self._counts['skipped'],
            'conflicts': self._counts['conflicts'],
            'failed': self._failed,
            'errors': [entry for _, entry in sorted(self._errors, key=lambda pair: -pair[0])],
        }


def _session_id(line: RawLine) -> str:
    """The session id a line names, to keep two lines of one session in file order; '' when it names none."""
    session_id = None if line.head is None else line.head.get('id')
    return session_id if isinstance(session_id, str) else ''


def _same(stored: SessionImage, line: SessionImage) -> bool:
    """Whether a stored session's fields (but its messages) are those of a line."""
    a, b = stored.record, line.record
    return (
        (a.created_at, a.updated_at, stored.next_id) == (b.created_at, b.updated_at, line.next_id)
        and _same_json(a.metadata, b.metadata)
        and _same_json(a.forked_from, b.forked_from)
        and _same_json(stored.summary, line.summary)
    )


def _same_json(a: bytes, b: bytes) -> bool:
    return a == b or (bool(a) and bool(b) and orjson.loads(a) == orjson.loads(b))
