"""A session's messages in the in-memory store (`memory.py`): one bytearray and an array of end offsets, which the
garbage collector does not look into, so that any run of messages is one slice (one JSON array, one copy)."""

import bisect
from array import array
from collections.abc import Sequence

from memsvc.context import kind_of, trim_count
from memsvc.stores.base import MessagePage, stored_kind


class MessageLog:
    """A session's messages, oldest first, each followed by a comma in one bytearray, and where each ends.

    Neither is a container the garbage collector looks into, and any run of messages is a JSON array with
    one copy of their bytes.
    """

    __slots__ = ('dropped', 'ends', 'records', 'text')

    def __init__(self) -> None:
        self.text = bytearray()
        self.ends = array('Q')
        """Where each message's comma ends, counted from the start of everything this log has held."""
        self.dropped = 0
        """Bytes cut from the front of `text` (by `drop_oldest`)."""
        self.records = array('Q')
        """Each message's record, parallel to `ends`."""

    def __len__(self) -> int:
        return len(self.ends)

    def extend(self, messages: list[bytes], records: Sequence[int] | None) -> None:
        self.records.extend(records if records is not None else [0] * len(messages))
        ends, end = self.ends, self.dropped + len(self.text)
        for message in messages:
            end += len(message) + 1
            ends.append(end)
        # The messages in one addition: the buffer grows (and may move) once per append rather than once
        # per message, whose many sizes would leave the heap fragmented (more memory per stored message).
        self.text += b','.join(messages) + b','

    def drop_oldest(self, count: int) -> None:
        cut = self.ends[count - 1] - self.dropped
        del self.text[:cut]  # O(1): a bytearray moves its start rather than its contents
        del self.ends[:count]
        del self.records[:count]
        self.dropped += cut

    def chunk_end(self, lo: int, size: int) -> int:
        """The position after the messages from `lo` on that fit in `size` bytes (at least one)."""
        limit = (self.ends[lo - 1] if lo else self.dropped) + size
        return max(bisect.bisect_right(self.ends, limit, lo), lo + 1)

    def remove(self, position: int) -> None:
        """Remove the message at `position`. The end offsets of the shorter side move: those after it down by its
        size, or those before it up by its size, with `dropped`, as if the bytes before it had been cut."""
        start = 0 if position == 0 else self.ends[position - 1] - self.dropped
        size = self.ends[position] - self.dropped - start
        del self.text[start : start + size]
        ends = self.ends
        if position >= len(ends) // 2:
            tail = ends[position + 1 :]
            del ends[position:]
            ends.extend(end - size for end in tail)
        else:
            head = ends[:position]
            del ends[: position + 1]
            ends[0:0] = array('Q', [end + size for end in head])
            self.dropped += size
        del self.records[position]

    def truncate(self, keep: int) -> None:
        """Keep the oldest `keep` messages (at least one)."""
        del self.text[self.ends[keep - 1] - self.dropped :]
        del self.ends[keep:]
        del self.records[keep:]

    def message(self, position: int) -> bytes:
        start = 0 if position == 0 else self.ends[position - 1] - self.dropped
        return bytes(self.text[start : self.ends[position] - self.dropped - 1])

    def page(self, lo: int, hi: int) -> MessagePage:
        """The messages at positions lo to hi - 1 as one copy of their bytes (as the context window reads them on
        every request: no bytes object per message)."""
        if lo >= hi:
            return MessagePage(b'', array('Q'), 0)
        ends, base = self.ends, self.ends[lo - 1] if lo else self.dropped
        return MessagePage(bytes(self.text[base - self.dropped : ends[hi - 1] - self.dropped - 1]), ends[lo:hi], base)

    def trim_count(self, at_least: int) -> int:
        """How many of the oldest messages to drop: `at_least`, and the tool messages right after them."""
        records = self.records
        kinds = (kind_of(records[n]) if records[n] else stored_kind(self.message(n), 0) for n in range(len(records)))
        return trim_count(kinds, at_least)

    def json_array(self, lo: int, hi: int) -> bytes:
        """The messages at positions lo to hi - 1, as a JSON array."""
        if lo >= hi:
            return b'[]'
        start = 0 if lo == 0 else self.ends[lo - 1] - self.dropped
        return b'[' + self.text[start : self.ends[hi - 1] - self.dropped - 1] + b']'


class LogCopy:
    """A copy of runs of other logs' messages, made in steps: its buffer is allocated once at its full size (the
    kernel zeroes pages lazily), so that no step reallocates, and so copies, what was copied before."""

    __slots__ = ('filled', 'log')

    def __init__(self, size: int) -> None:
        self.log = MessageLog()
        self.log.text = bytearray(size)
        self.filled = 0

    def add(self, other: MessageLog, lo: int, hi: int) -> None:
        """Append `other`'s messages at positions lo to hi - 1: one copy of their bytes and records, and their end
        offsets moved into the copy's (one subtraction each)."""
        log, start = self.log, other.ends[lo - 1] - other.dropped if lo else 0
        end = other.ends[hi - 1] - other.dropped
        size = end - start
        if self.filled + size > len(log.text):
            log.text.extend(bytes(self.filled + size - len(log.text)))
        with memoryview(other.text) as view:
            log.text[self.filled : self.filled + size] = view[start:end]
        shift = other.dropped + start - self.filled
        log.ends.extend(array('Q', [offset - shift for offset in other.ends[lo:hi]]))
        log.records.extend(other.records[lo:hi])
        self.filled += size

    def done(self) -> MessageLog:
        del self.log.text[self.filled :]
        return self.log
