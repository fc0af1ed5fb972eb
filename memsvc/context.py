"""The context window: the recent history that fits a token budget (SPEC-2 §1), as pure functions.

A store hands over the session's leading system/developer messages (the pinned run), the summary if one
is set, and the other messages newest first, each as `(stored JSON, record)`; `fit` / `afit` choose the
window and `memsvc.render` shapes it for a provider. The rules, in order:

1. the pinned run is always in the window, also when the summary covers it; if it does not fit together
   with the summary, `ContextBudgetTooSmall` says how many tokens they need;
2. the summary follows, as one system message;
3. then the newest messages that still fit, oldest first; never one with an id the summary covers;
4. a unit is an assistant message with `tool_calls` and the run of `tool` messages right after it: kept or
   dropped whole. A `tool` message outside such a unit (its call trimmed, deleted, or covered by the summary)
   answers nothing a provider can see, and providers reject it with a 400: it is left out wherever it is;
5. `tokens <= max_tokens` (the budget includes the per-message framing and the reply's priming).

Reading stops at the first unit that does not fit (the window is the contiguous recent history, never a
sample of it), at the summary's or the pinned run's last id, or when the budget has no room for even the
smallest message: a store paging backwards reads only what the window needs.

A message's record is one int a store keeps next to it (8 bytes), made once at append by `record`: its
token count under the default encoding (bits 8 on), its kind (plain, tool call, tool result, system/developer;
bits 0-1), whether it has any field but role and content (`BARE`, bit 2) and, for a bare message, how long
its stored timestamp is (bits 3-7, `tail_of`), so that a renderer can cut the timestamp off without looking
for it.
Fitting reads only records and the id at the start of the stored JSON: it neither tokenizes nor parses
history. `Window.tokens` is the OpenAI Chat Completions bill of the window (`memsvc.tokens`): the
messages' counts, the summary's and `REPLY_PRIMING`; 0 for an empty window.
"""

from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from memsvc.errors import MemsvcError
from memsvc.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter

Counted = tuple[bytes, int]
"""A stored message (its JSON as `models.with_id` makes it) and its `record`."""

PLAIN: Final = 0
CALL: Final = 1
"""An assistant message with tool calls."""
RESULT: Final = 2
"""A tool message."""
INSTRUCTION: Final = 3
"""A system or developer message."""
INSTRUCTIONS: Final = frozenset({'system', 'developer'})

BARE: Final = 4
"""Flag: the message is not a tool message and has no field but its role and content (and id and
timestamp), so a renderer may copy its bytes instead of decoding them."""
_KIND_MASK: Final = 3
FLAGS: Final = 7
"""The bits of a record that hold its kind and `BARE`."""
TAIL_SHIFT: Final = 3
TAIL_BASE: Final = 32
"""Bits 3-7 of a bare message's record hold the length of its stored `,"timestamp":"…"}` less this (1 to 31:
a timestamp of 17 to 47 characters; 0: not kept)."""
TOKENS_SHIFT: Final = 8
_SMALLEST: Final = MESSAGE_OVERHEAD + 1  # a message is framed and has a role of at least one token
_ID_START: Final = len(b'{"id":')


def kind(message: Mapping[str, Any]) -> int:
    role = message['role']
    if role == 'tool':
        return RESULT
    if role in INSTRUCTIONS:
        return INSTRUCTION
    return CALL if role == 'assistant' and message.get('tool_calls') else PLAIN


_BARE_FIELDS: Final = frozenset({'id', 'role', 'content', 'timestamp'})
_BARE_FLAGS: Final = {'user': PLAIN | BARE, 'assistant': PLAIN | BARE, 'system': INSTRUCTION | BARE}
_BARE_FLAGS['developer'] = INSTRUCTION | BARE
_TAIL_FRAME: Final = len(',"timestamp":""}')  # what a stored timestamp's tail takes besides its characters
_TAILS: Final = {
    length: (length + _TAIL_FRAME - TAIL_BASE) << TAIL_SHIFT
    for length in range(TAIL_BASE - _TAIL_FRAME + 1, TAIL_BASE - _TAIL_FRAME + (1 << (TOKENS_SHIFT - TAIL_SHIFT)))
}
"""A bare message's `tail_of` bits by the length of its timestamp (none for a length they cannot hold)."""


def record(counter: TokenCounter, message: Mapping[str, Any], timestamp_length: int | None = None) -> int:
    """What a store keeps next to a message for the window: its count under `counter`, its `kind`, the `BARE`
    flag and its timestamp's length, as one non-negative int below 2**63. Takes a `NewMessage` at append, with the
    length of the timestamp it is stored with (`models.timestamp_length`), or a stored message decoded (for an
    encoding whose records are not stored), whose own timestamp it measures."""
    role = message['role']
    if timestamp_length is None:
        timestamp_length = len(message.get('timestamp') or '')
    flags = _BARE_FLAGS.get(role)
    if flags is not None and message.keys() <= _BARE_FIELDS:  # the common message: a role and a content
        return counter.bare(role, message['content']) << TOKENS_SHIFT | _TAILS.get(timestamp_length, 0) | flags
    if role != 'tool' and all(value is None for key, value in message.items() if key not in _BARE_FIELDS):
        flags = kind(message) | BARE | _TAILS.get(timestamp_length, 0)
    else:
        flags = kind(message)
    return counter.message(message) << TOKENS_SHIFT | flags


def tokens_of(value: int) -> int:
    """The token count in a `record`."""
    return value >> TOKENS_SHIFT


def tail_of(value: int) -> int:
    """How many bytes a bare message's stored `,"timestamp":"…"}` takes, from its `record` (TAIL_BASE: not kept)."""
    return ((value & 0xFF) >> TAIL_SHIFT) + TAIL_BASE


def kind_of(value: int) -> int:
    return value & _KIND_MASK


def is_bare(value: int) -> bool:
    return bool(value & BARE)


def message_id(raw: bytes) -> int:
    """The id of a stored message, read from the `{"id":N,` that `models.with_id` puts first."""
    return int(raw[_ID_START : raw.index(b',', _ID_START)])


class ContextBudgetTooSmall(MemsvcError):
    """The pinned system/developer run and the summary alone need more than `max_tokens`."""

    code = 'context_budget_too_small'

    def __init__(self, needed: int, max_tokens: int) -> None:
        super().__init__(
            f'max_tokens: the leading system/developer messages and the summary need {needed} tokens, '
            f'more than {max_tokens}'
        )
        self.needed = needed
        self.max_tokens = max_tokens


@dataclass(slots=True, frozen=True)
class Summary:
    """The session's summary; `tokens` is its count as one system message (`TokenCounter.system`)."""

    content: str
    through_id: int
    tokens: int


@dataclass(slots=True)
class Window:
    """The messages `fit` chose, before rendering, as the store handed them over. `units` is oldest first;
    each unit is oldest first."""

    pinned: list[Counted]
    summary: Summary | None
    units: list[list[Counted]]
    tokens: int
    dropped: int
    max_tokens: int | None

    @property
    def first_id(self) -> int | None:
        """The id of the oldest message in the window."""
        if self.pinned:
            return message_id(self.pinned[0][0])
        return message_id(self.units[0][0][0]) if self.units else None


class _Fitter:
    """Newest-first reading: `feed` messages until it answers False, then `window()`. The loop over messages
    is one function with its state in locals: it runs for every message a window reads."""

    __slots__ = (
        'boundary',
        'max_tokens',
        'pending',
        'pending_tokens',
        'pinned',
        'remaining',
        'summary',
        'tokens',
        'total',
        'units',
    )

    def __init__(self, pinned: Sequence[Counted], summary: Summary | None, total: int, max_tokens: int | None) -> None:
        self.pinned = list(pinned)
        self.summary = summary
        self.total = total
        self.max_tokens = max_tokens
        self.tokens = sum(value >> TOKENS_SHIFT for _, value in self.pinned) + (summary.tokens if summary else 0)
        self.remaining = 0
        if max_tokens is not None:
            if self.tokens and self.tokens + REPLY_PRIMING > max_tokens:
                raise ContextBudgetTooSmall(self.tokens + REPLY_PRIMING, max_tokens)
            self.remaining = max_tokens - REPLY_PRIMING - self.tokens
        self.boundary = max(message_id(self.pinned[-1][0]) if self.pinned else 0, summary.through_id if summary else 0)
        self.units: list[list[Counted]] = []
        self.pending: list[Counted] = []  # tool messages, newest first, waiting for their call
        self.pending_tokens = 0

    def feed(self, newest_first: Iterable[Counted]) -> bool:
        """Read messages, newest first, into the window; False once it wants no more."""
        boundary, unbounded, remaining = self.boundary, self.max_tokens is None, self.remaining
        units, pending, pending_tokens, kept = self.units, self.pending, self.pending_tokens, self.tokens
        more = True
        for counted in newest_first:
            raw, value = counted
            if int(raw[_ID_START : raw.index(b',', _ID_START)]) <= boundary:
                more = False
                break
            tokens, kind = value >> TOKENS_SHIFT, value & _KIND_MASK
            if kind == RESULT:
                pending.append(counted)
                pending_tokens += tokens
                if unbounded or pending_tokens <= remaining:  # its unit only grows from here
                    continue
                more = False
                break
            if kind == CALL:
                unit = [counted, *reversed(pending)]
                tokens += pending_tokens
            else:
                unit = [counted]  # pending tool messages, if any, answer no call: left out
            pending.clear()
            pending_tokens = 0
            if not unbounded:
                if tokens > remaining:
                    more = False
                    break
                remaining -= tokens
            units.append(unit)
            kept += tokens
            if not unbounded and remaining < _SMALLEST:
                more = False
                break
        self.remaining, self.pending_tokens, self.tokens = remaining, pending_tokens, kept
        return more

    def window(self) -> Window:
        self.units.reverse()
        included = len(self.pinned) + sum(len(unit) for unit in self.units)
        tokens = self.tokens + REPLY_PRIMING if self.tokens else 0
        return Window(self.pinned, self.summary, self.units, tokens, self.total - included, self.max_tokens)


def fit(
    pinned: Sequence[Counted],
    summary: Summary | None,
    newest_first: Iterable[Counted],
    total: int,
    max_tokens: int | None,
) -> Window:
    """Choose the window (rules 1-5 above). `pinned` is the leading system/developer run, oldest first;
    `newest_first` yields the session's other messages, newest first (it may go on into the summary's or the
    pinned run's ids: reading stops there); `total` is the number of messages stored in the session, for
    `dropped`. Raises `ContextBudgetTooSmall` when the pinned run and the summary exceed `max_tokens`."""
    fitter = _Fitter(pinned, summary, total, max_tokens)
    fitter.feed(newest_first)
    return fitter.window()


async def afit(
    pinned: Sequence[Counted],
    summary: Summary | None,
    pages: AsyncIterable[Iterable[Counted]],
    total: int,
    max_tokens: int | None,
) -> Window:
    """`fit` over pages read asynchronously, each newest first, the pages newest first (a store paging
    backwards through a long history): no page is asked for once the window is full."""
    fitter = _Fitter(pinned, summary, total, max_tokens)
    async for page in pages:
        if not fitter.feed(page):
            break
    return fitter.window()


def leading_instructions(oldest_first: Iterable[Counted]) -> list[Counted]:
    """The pinned run: the session's messages from the oldest on, up to its first that is neither `system`
    nor `developer` (a store reads its head lazily and stops there)."""
    run: list[Counted] = []
    for counted in oldest_first:
        if counted[1] & _KIND_MASK != INSTRUCTION:
            break
        run.append(counted)
    return run


def trim_count(kinds_oldest_first: Iterable[int], at_least: int) -> int:
    """How many of a session's oldest messages to trim (for `MEMSVC_MAX_MESSAGES_PER_SESSION`) so that at least
    `at_least` go and the oldest one kept is not a tool message whose call went: the whole unit goes.
    `kinds_oldest_first` are the messages' kinds (`kind_of(record)`) from the oldest on; it needs to reach only
    past the run of tool messages at `at_least`."""
    seen = 0
    for value in kinds_oldest_first:
        if seen >= at_least and value != RESULT:
            return seen
        seen += 1
    return max(seen, at_least)
