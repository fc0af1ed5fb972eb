"""The ids a session does not store between its first stored message and its next id: its gaps.

Ids are given in order and never reused, so a session's stored ids are `first .. next_id - 1` minus its gaps: the
ids of messages deleted one by one (`DELETE …/messages/{id}`) and those cut by a truncation (`?after=`), whose
tail gap runs up to `next_id` so that the next append continues after the highest id ever given. A session that
never lost a message in the middle has no gaps (`()`), and every store then maps ids to positions by plain
arithmetic, as before there were gaps; only a session with gaps pays for them.

The gaps are sorted, disjoint, merged half-open ranges `(start, end)` strictly inside `(first, next_id)`: never
touching the first stored message (deleting the first message moves `first` instead). Stores that keep them as text
(Redis, Chroma) write `start:end` pairs joined by commas, `"6:11,15:16"` (ids 6 to 10 and 15); the Lua of
`redis_scripts.GAPS` is this module again, on that text.
"""

from collections.abc import Iterator

Gaps = tuple[tuple[int, int], ...]


def parse(text: str | bytes | None) -> Gaps:
    if not text:
        return ()
    raw = text.decode() if isinstance(text, bytes) else text
    pairs = (pair.split(':') for pair in raw.split(','))
    return tuple((int(start), int(end)) for start, end in pairs)


def format(gaps: Gaps) -> str:
    return ','.join(f'{start}:{end}' for start, end in gaps)


def missing(gaps: Gaps) -> int:
    """How many ids the gaps hold."""
    return sum(end - start for start, end in gaps)


def stored_below(gaps: Gaps, first: int, next_id: int, x: int) -> int:
    """How many stored ids are below `x` (the position of `x`, when it is stored)."""
    if x <= first:
        return 0
    x = min(x, next_id)
    below = x - first
    for start, end in gaps:
        if start >= x:
            break
        below -= min(end, x) - start
    return below


def id_at(gaps: Gaps, first: int, position: int) -> int:
    """The id of the stored message at `position` (0: the first)."""
    found = first + position
    for start, end in gaps:
        if start > found:
            break
        found += end - start
    return found


def holds(gaps: Gaps, first: int, next_id: int, x: int) -> bool:
    """Whether `x` is a stored id."""
    return first <= x < next_id and not any(start <= x < end for start, end in gaps)


def stored_ids(gaps: Gaps, lo: int, hi: int) -> Iterator[int]:
    """The stored ids from `lo` (at least the first) to `hi - 1` (at most `next_id - 1`), ascending."""
    for start, end in gaps:
        if start >= hi:
            break
        if end > lo:
            yield from range(lo, min(start, hi))
            lo = max(lo, end)
    yield from range(lo, hi)


def deleted(gaps: Gaps, first: int, x: int) -> tuple[int, Gaps]:
    """`first` and the gaps once the stored id `x` is deleted."""
    if x == first:
        if gaps and gaps[0][0] == x + 1:  # the first stored message is now the one after that gap
            return gaps[0][1], gaps[1:]
        return x + 1, gaps
    merged: list[tuple[int, int]] = []
    start, end = x, x + 1
    for gap in gaps:
        if gap[1] == start:
            start = gap[0]
        elif gap[0] == end:
            end = gap[1]
        else:
            merged.append(gap)
    merged.append((start, end))
    return first, tuple(sorted(merged))


def truncated(gaps: Gaps, first: int, next_id: int, after: int) -> tuple[int, Gaps]:
    """`first` and the gaps once every id above `after` is removed; `first` is `next_id` when nothing stays."""
    if stored_below(gaps, first, next_id, after + 1) == 0:
        return next_id, ()
    kept = [(start, min(end, after + 1)) for start, end in gaps if start <= after]
    if after + 1 < next_id:
        if kept and kept[-1][1] == after + 1:
            kept[-1] = (kept[-1][0], next_id)
        else:
            kept.append((after + 1, next_id))
    return first, tuple(kept)


def trimmed(gaps: Gaps, first: int) -> Gaps:
    """The gaps once the oldest messages are dropped and the stored id `first` is the first."""
    return tuple(gap for gap in gaps if gap[0] > first)
