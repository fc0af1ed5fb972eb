"""`SharedReads`: one read for the readers that ask the same thing while it runs, never one begun before a wake-up."""

import asyncio

import pytest

from memsvc.events import Change, Hub
from memsvc.shared_reads import SharedReads

S = ('default', 'session')


class Store:
    """Reads that answer when the test says so, counted."""

    def __init__(self) -> None:
        self.started = 0
        self.gate = asyncio.Event()

    async def read(self) -> list[int]:
        self.started += 1
        number = self.started
        await self.gate.wait()
        return [number]


async def test_readers_of_the_same_range_share_the_read_in_flight() -> None:
    reads, store = SharedReads(), Store()
    readers = [asyncio.ensure_future(reads.read(S, 'after 5', store.read)) for _ in range(3)]
    other = asyncio.ensure_future(reads.read(S, 'after 4', store.read))
    await asyncio.sleep(0)
    store.gate.set()
    answers = await asyncio.gather(*readers)
    assert answers == [[1], [1], [1]]
    assert await other == [2]
    assert store.started == 2
    assert await reads.read(S, 'after 5', store.read) == [3], 'a read that ended is not joined: it is read again'


async def test_after_a_wake_up_a_reader_does_not_join_a_read_begun_before_it() -> None:
    reads, store = SharedReads(), Store()
    early = asyncio.ensure_future(reads.read(S, 'after 5', store.read))
    await asyncio.sleep(0)
    reads.forget(S)  # a wake-up: a message was written after the read in flight began
    woken = asyncio.ensure_future(reads.read(S, 'after 5', store.read))
    await asyncio.sleep(0)
    store.gate.set()
    assert (await early, await woken) == ([1], [2])


async def test_a_reader_that_goes_leaves_the_read_to_the_others_and_errors_reach_every_reader() -> None:
    reads, store = SharedReads(), Store()
    leaving = asyncio.ensure_future(reads.read(S, 'after 5', store.read))
    staying = asyncio.ensure_future(reads.read(S, 'after 5', store.read))
    await asyncio.sleep(0)
    leaving.cancel()
    store.gate.set()
    assert await staying == [1]
    assert leaving.cancelled()

    async def failing() -> list[int]:
        await asyncio.sleep(0)
        raise ConnectionError('down')

    both = [asyncio.ensure_future(reads.read(S, 'after 6', failing)) for _ in range(2)]
    for reader in both:
        with pytest.raises(ConnectionError):
            await reader


async def test_the_hub_forgets_a_sessions_reads_at_each_wake_up_and_when_nobody_waits_on_it() -> None:
    """So that a request woken by a write reads after it, and one that comes after the session's last listener went
    (whose wake-ups nobody took) reads after those writes too."""
    hub, store = Hub(), Store()
    async with hub.listen('t', 's') as listener:
        key = listener.key
        readers = [asyncio.ensure_future(hub.reads.read(key, 'after 5', store.read))]
        await asyncio.sleep(0)
        hub.notify('t', 's', Change('message', 6))  # as in_memory and Chroma wake
        readers.append(asyncio.ensure_future(hub.reads.read(key, 'after 5', store.read)))
        await asyncio.sleep(0)
        hub.appended('t', 's', [b'{"id":7,"role":"user","content":"x"}'])  # the append path's own
        readers.append(asyncio.ensure_future(hub.reads.read(key, 'after 5', store.read)))
        await asyncio.sleep(0)
        hub.deliver(key, Change('message', 8))  # as the Redis subscription wakes
        readers.append(asyncio.ensure_future(hub.reads.read(key, 'after 5', store.read)))
        await asyncio.sleep(0)
    async with hub.listen('t', 's') as listener:
        readers.append(asyncio.ensure_future(hub.reads.read(key, 'after 5', store.read)))
        await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(*readers) == [[1], [2], [3], [4], [5]]
