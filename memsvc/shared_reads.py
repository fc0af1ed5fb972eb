"""One store read for the waiting requests of a session that ask for the same messages after the same wake-up.

One append to a session that 1,000 event streams follow wakes all 1,000, and each would read the store "after
its last id" on its own: 1,000 reads of the same message. Instead the first of them starts the read and the
others, asking for the same range (the same `MessageRange`: the same last id), wait for it and share its answer.

What keeps the rule that a woken reader reads after the wake-up (so that it sees the write that woke it): a read
may be joined only while it is in flight and only until the session's next wake-up. The hub calls `forget` for
the session on every wake-up it hands out, before any listener runs, so a listener woken by a write joins only a
read that began after that wake-up arrived, and a wake-up's write was made before it was sent. A reader that
goes (its client left) leaves the read running for the others; its error (the store down, the session gone)
reaches every reader of it.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

T = TypeVar('T')


class _Read:
    """One read in flight and the futures of the readers waiting for it."""

    __slots__ = ('task', 'waiters')

    def __init__(self, task: 'asyncio.Future[Any]') -> None:
        self.task = task
        self.waiters: list[asyncio.Future[Any]] = []


class SharedReads:
    """The reads in flight, by session and by what they read."""

    __slots__ = ('_reads',)

    def __init__(self) -> None:
        self._reads: dict[Hashable, dict[Hashable, _Read]] = {}

    async def read(self, session: Hashable, what: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`'s answer, from a read of the same `what` already in flight for `session`, or a new one. Every
        caller gets the same object: treat it as read-only."""
        reads = self._reads.get(session)
        if reads is None:
            reads = self._reads[session] = {}
        entry = reads.get(what)
        if entry is None:
            entry = reads[what] = _Read(asyncio.ensure_future(read()))
            entry.task.add_done_callback(functools.partial(self._done, session, what, entry))
        # Each reader waits on a future of its own: one that is cancelled (its client went) cancels only that, not
        # the read. (One callback settles them all: `asyncio.shield` per reader cost four callbacks each.)
        waiter = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        return cast(T, await waiter)

    def forget(self, session: Hashable) -> None:
        """A wake-up for `session`: the reads in flight may have begun before its write, so none is joined again."""
        self._reads.pop(session, None)

    def forget_all(self) -> None:
        self._reads.clear()

    def _done(self, session: Hashable, what: Hashable, entry: _Read, task: 'asyncio.Future[Any]') -> None:
        reads = self._reads.get(session)
        if reads is not None and reads.get(what) is entry:
            del reads[what]
            if not reads:
                del self._reads[session]
        if task.cancelled():
            for waiter in entry.waiters:
                waiter.cancel()
            return
        error = task.exception()  # retrieved here, also for when every reader went
        for waiter in entry.waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(task.result())
            else:
                waiter.set_exception(error)
