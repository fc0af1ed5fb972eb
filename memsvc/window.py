"""The context window's reads (SPEC-2 §1): one store read, then a fast path for the common window or the general one.

The first read is `Store.read_window`, one step on every store (one script on Redis): the newest messages that
one read should need (`page_size`), their records, the session's oldest id and count, its pinned run's head and
its summary. A long session whose window needs more is read on backwards, a page at a time, each twice the last.

The fast path answers the window most gateways read — no summary, no pinned run, every message read a plain
`user`/`assistant` one with only a role and a content (`context.PLAIN | context.BARE`), in `openai`, `responses`
or `memsvc` — without a Python step per message but a slice: the check is one C-level pass over the records' low
bytes, the window is the newest messages whose sum of tokens fits (`sum`, or `itertools.accumulate` and
`bisect`), and a stored bare message is `{"id":N,"role":R,"content":C,"timestamp":T}`, of which the answer takes
`"role":R,"content":C`:

- messages held as one bytes (the in-memory store's buffer, `stores.base.MessagePage`) are split at each
  `{"id":`, which is JSON structure wherever it occurs: inside a JSON string every quote is escaped (`\\"`), so
  no string can hold it. Each piece is then `N,"role":R,"content":C,"timestamp":T},` and is sliced as below;
  a buffer whose timestamps differ in length is rewritten by one regular expression instead (between two
  messages `,"timestamp":T},{"id":N,` becomes `},{`, structure for the same reason);
- messages held as a bytes each (Redis, Chroma) are sliced: past `{"id":N,`, as long in every message whose id has
  as many digits, and short of `,"timestamp":T}`, whose length the records hold (`context.tail_of`). A window whose
  timestamps differ in length (one written on a whole second) takes the general path.

The answer is the same, byte for byte, as the general path's (`memsvc.context.fit` and `memsvc.render`), which
handles every other window (tests/test_window.py proves it on random sessions, with contents that look like that
structure).
"""

import operator
import re
import sys
from array import array
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from itertools import accumulate, repeat
from typing import Final, cast

import orjson

from memsvc.context import (
    BARE,
    FLAGS,
    PLAIN,
    TAIL_SHIFT,
    TOKENS_SHIFT,
    Counted,
    Summary,
    Window,
    afit,
    leading_instructions,
    message_id,
    record,
    tail_of,
)
from memsvc.errors import SessionNotFound
from memsvc.render import ContextWindow, Format, render
from memsvc.stores.base import MessagePage, MessageRange, Store, WindowRead, join_newest
from memsvc.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, Counters, EncodingName, TokenCounter

TOKENS_PER_MESSAGE_GUESS: Final = 24
"""The first read takes max_tokens / this many of the newest messages: enough for one read to fill the budget
with messages of this many tokens or more; shorter ones take more reads."""
HEAD_PAGE: Final = 16
"""Messages per read of a long session's head, where the pinned system/developer run is."""
MAX_PAGE: Final = 2000
_FAST_READ_LIMIT: Final = 4 * MAX_PAGE
_SMALLEST: Final = MESSAGE_OVERHEAD + 1  # a message is framed and has a role of at least one token


def page_size(max_tokens: int | None) -> int | None:
    """How many of the newest messages the first read takes (None: all of them)."""
    if max_tokens is None:
        return None
    return min(max(max_tokens // TOKENS_PER_MESSAGE_GUESS, HEAD_PAGE), MAX_PAGE)


async def context(
    store: Store,
    counters: Counters,
    tenant: str,
    session_id: str,
    *,
    max_tokens: int | None,
    format: Format,
    encoding: EncodingName,
) -> ContextWindow | bytes:
    """The context window of `session_id`, rendered for `format` (see the module docstring); as the JSON of the
    answer where the fast path wrote it. The stored records count under the default encoding; under another one,
    and for a message stored without a record, each message the window reads is counted as it is read."""
    default = counters.default
    counter = default if encoding == default.name else await counters.get(encoding)
    recount = counter is not default
    size = page_size(max_tokens)
    first = await store.read_window(tenant, session_id, size, HEAD_PAGE)
    if first is None:
        raise SessionNotFound(session_id)
    while not recount and format != 'anthropic':
        body = fast(first, max_tokens, format)
        if body is None:
            break
        if body:
            return body
        # every message read fits and older ones exist: read more at once (the window holds at most
        # max_tokens / _SMALLEST messages), up to what the general path would read in pages anyway
        if max_tokens is None or size is None or size > _FAST_READ_LIMIT:
            break
        size = min(size * 4, max_tokens // _SMALLEST + 1)
        first = await store.read_window(tenant, session_id, size, HEAD_PAGE)
        if first is None:
            raise SessionNotFound(session_id)
    window = await general(store, tenant, session_id, first, counter, recount, max_tokens, size)
    return render(window, format, counter)


# --- the fast path -----------------------------------------------------------------------------------------

_PLAIN_BARE: Final = PLAIN | BARE
_LOW: Final = 0 if sys.byteorder == 'little' else 7  # where a record's low byte is in its 8 bytes
_PLAIN_BARE_BYTES: Final = bytes(b for b in range(256) if b & FLAGS == _PLAIN_BARE)
_ID_KEY: Final = b'{"id":'
"""What each stored message starts with, and nothing inside one can hold (a quote in a JSON string is escaped)."""
_ID_START: Final = len(_ID_KEY)
_TAIL_BY_LOW: Final = tuple(tail_of(low) for low in range(256))
"""`context.tail_of` by a record's low byte."""
_ANSWER: Final = b'"tokens":%d,"dropped":%d,"first_id":%s,"summary":false}'
_ANSWERS: Final[dict[str, bytes]] = {
    'openai': b'{"format":"openai","messages":[{%s}],' + _ANSWER,
    'responses': b'{"format":"responses","messages":[{"type":"message",%s}],' + _ANSWER,
    'memsvc': b'{"format":"memsvc","messages":[%s],' + _ANSWER,
}
_EMPTY: Final = b'{"format":"%s","messages":[],' + _ANSWER
_BETWEEN: Final[dict[str, bytes]] = {'openai': b'},{', 'responses': b'},{"type":"message",'}
"""What goes between two messages' `"role":R,"content":C` in a format's answer."""
_cut = cast(Callable[[bytes, slice], bytes], operator.getitem)  # bytes[slice], typed for map
_TIMESTAMP: Final = b',"timestamp":'
_BETWEEN_STORED: Final = re.compile(rb',"timestamp":"[^"]*"\},\{"id":\d+,')
"""Where a stored bare message ends and the next begins in their joined JSON: its timestamp, the next one's id."""


def fast(read: WindowRead, max_tokens: int | None, format: Format) -> bytes | None:
    """The answer of the window from `read` when it is the common one (module docstring), else None; empty when
    it is the common one so far but every message read fits and older ones exist. `read` holds records under the
    default encoding."""
    messages, records, total, _, head, _, summary = read
    count = len(records)
    if summary is not None or head or not count or format == 'anthropic':
        return None
    packed = records if isinstance(records, array) else array('Q', records)
    low = packed.tobytes()[_LOW::8]  # each record's kind, BARE and timestamp length
    flags = low[0]
    uniform = low.count(flags) == count  # the usual: then the checks and sums take no step per message
    if (flags & FLAGS != _PLAIN_BARE) if uniform else low.translate(None, _PLAIN_BARE_BYTES):
        return None  # some message is not a bare plain one (or has no record)
    # less their low bytes, the records sum to 256 times the sum of the tokens
    whole = sum(records) - (flags * count if uniform else sum(low))
    budget = None if max_tokens is None else (max_tokens - REPLY_PRIMING) << TOKENS_SHIFT
    if budget is None or whole <= budget:
        kept, kept_sum = count, whole
    else:  # the running sums of the newest 1, 2, ... messages
        sums = list(accumulate(map(operator.sub, reversed(packed), repeat(flags) if uniform else reversed(low))))
        kept = bisect_right(sums, budget)
        kept_sum = sums[kept - 1] if kept else 0
    if kept == count < total:
        return b''  # all it read fits: older messages may fit too
    if not kept:
        return _EMPTY % (format.encode(), 0, total, b'null')
    tokens = (kept_sum >> TOKENS_SHIFT) + REPLY_PRIMING
    if format == 'memsvc':
        joined = join_newest(messages, kept)
        items, first_id = joined, _stored_id(joined)
    elif not (uniform and flags >> TAIL_SHIFT):
        if not isinstance(messages, MessagePage):
            return None  # timestamps of other lengths (or not measured in the records)
        joined = messages.newest(kept)  # one bytes, timestamps of other lengths: one regular expression
        inner = joined[joined.index(b',', _ID_START) + 1 : joined.rindex(_TIMESTAMP)]
        items, first_id = _BETWEEN_STORED.sub(_BETWEEN[format], inner), _stored_id(joined)
    else:
        if isinstance(messages, MessagePage):  # one bytes: split into the messages less their `{"id":`
            split = (messages.page if kept == count else messages.newest(kept)).split(_ID_KEY)
            del split[0]
            split[-1] += b','  # each piece `N,"role":R,"content":C,"timestamp":T},`
            pieces: Sequence[bytes] = split
            start, tail = 0, _TAIL_BY_LOW[flags] + 1
        else:  # a bytes per message
            pieces = messages if kept == count else messages[count - kept :]
            start, tail = _ID_START, _TAIL_BY_LOW[flags]
        oldest, newest = pieces[0], pieces[-1]  # of the window
        skip, last_skip = oldest.index(b',', start) + 1, newest.index(b',', start) + 1
        first_id = oldest[start : skip - 1]
        if skip == last_skip:  # the usual window: all its ids have as many digits
            fields: Iterable[bytes] = map(_cut, pieces, repeat(slice(skip, -tail)))
        else:
            fields = map(_cut, pieces, _runs(pieces, tail, start, first_id, newest[start : last_skip - 1]))
        items = _BETWEEN[format].join(fields)
    return _ANSWERS[format] % (items, tokens, total - kept, first_id)


def _stored_id(raw: bytes) -> bytes:
    """The id of a stored message as its bytes (`context.message_id` as an int)."""
    return raw[_ID_START : raw.index(b',', _ID_START)]


def _runs(messages: Sequence[bytes], tail: int, start: int, first_id: bytes, last_id: bytes) -> list[slice]:
    """The slices that cut bare `messages` whose ids have not all as many digits (`fast`): one per message, the
    same for each run of ids with as many digits (from `start` on: the id, its comma, then the fields)."""
    count = len(messages)
    slices: list[slice] = []
    at, first = 0, int(first_id)
    if int(last_id) - first == count - 1:  # consecutive: each run ends where 10 ** digits is
        for digits in range(len(first_id), len(last_id)):
            end = 10**digits - first
            slices += [slice(start + digits + 1, -tail)] * (end - at)
            at = end
        return slices + [slice(start + len(last_id) + 1, -tail)] * (count - at)
    while at < count:  # messages were deleted: bisect for each run's end
        skip = messages[at].index(b',', start) + 1
        end = bisect_right(messages, skip, at, key=lambda message: message.index(b',', start) + 1)
        slices += [slice(skip, -tail)] * (end - at)
        at = end
    return slices


# --- the general path --------------------------------------------------------------------------------------


async def general(
    store: Store,
    tenant: str,
    session_id: str,
    first: WindowRead,
    counter: TokenCounter,
    recount: bool,
    max_tokens: int | None,
    size: int | None,
) -> Window:
    """Fit the window (`memsvc.context.afit`) from `first` and, for a long session, older pages and the rest of
    its pinned run."""
    newest: list[Counted] = list(zip(first.messages, first.records, strict=True))
    total = first.total
    summary = None
    if first.summary is not None:
        stored = orjson.loads(first.summary)
        summary = Summary(stored['content'], stored['through_id'], counter.system(stored['content']))
    if len(newest) >= total:
        pinned = leading_instructions(_counted(newest, counter, recount))
    else:
        pinned = leading_instructions(_counted(zip(first.head, first.head_records, strict=True), counter, recount))
        if len(first.head) >= HEAD_PAGE and len(pinned) == len(first.head):  # the run may go on
            pinned += await _pinned(store, tenant, session_id, message_id(pinned[-1][0]), counter, recount)
    # no read goes past the pinned run's or the summary's last id, or the oldest stored message (ids have gaps
    # where messages were deleted: the store reports the oldest one's)
    stop = max(
        message_id(pinned[-1][0]) if pinned else 0,
        summary.through_id if summary else 0,
        first.oldest_id - 1,
    )

    async def pages() -> AsyncIterator[Iterator[Counted]]:
        messages, limit, read = newest, size or MAX_PAGE, 0
        while messages:
            yield _counted(reversed(messages), counter, recount)
            read += len(messages)
            oldest = message_id(messages[0][0])
            if oldest - 1 <= stop or read >= total:
                return
            limit = min(limit * 2, MAX_PAGE)
            older = await store.get_counted_messages(tenant, session_id, MessageRange(limit, before=oldest))
            messages = [] if older is None else older.messages

    return await afit(pinned, summary, pages(), total, max_tokens)


async def _pinned(
    store: Store, tenant: str, session_id: str, after: int, counter: TokenCounter, recount: bool
) -> list[Counted]:
    """The rest of a session's leading system/developer run, read from the message after `after` on."""
    run: list[Counted] = []
    while True:
        page = await store.get_counted_messages(tenant, session_id, MessageRange(HEAD_PAGE, after=after))
        if page is None or not page.messages:
            return run
        head = list(_counted(page.messages, counter, recount))
        leading = leading_instructions(head)
        run += leading
        if len(leading) < len(head):
            return run
        after = message_id(head[-1][0])


def _counted(messages: Iterable[Counted], counter: TokenCounter, recount: bool) -> Iterator[Counted]:
    """The messages with their records under `counter`: as stored, or counted now (`recount`: another encoding
    than the stored records'; a record of 0: stored without one). Lazy: only what the window reads is counted."""
    for raw, value in messages:
        yield (raw, record(counter, orjson.loads(raw))) if recount or not value else (raw, value)
