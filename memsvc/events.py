"""Wake-ups for long-polls and event streams: a write to a session wakes the requests waiting on it.

A wake-up is only a hint. A woken reader reads the store again "after the last id it has", so a lost or
repeated wake-up never loses or repeats a message: at worst a reader learns of a message later (at its next
wake-up, or within `POLL_SECONDS` while wake-ups cannot be trusted). A waiting request holds no store
connection: it holds a `Listener` of the `Hub`, which is memory only.

Where wake-ups come from:
- **in_memory and Chroma**: the manager calls `Hub.notify` after each write; the hub wakes this process's
  listeners. Chroma in server mode with several memsvc processes: a process learns only of its own writes at
  once; its listeners also re-read every `POLL_SECONDS` (`Hub.poll_seconds`), so a write through another
  process reaches them within that time, at the cost of one read per waiting request per interval.
- **Redis and Redis Cluster**: the write's own Lua script publishes (`redis_scripts.NOTIFY`), so notifying costs
  the memsvc process nothing (no extra round trip on the append path); `RedisWakeups` (one subscription per
  process) hands what arrives to the hub, for this process's writes and every other replica's alike.

The Redis subscription is `memsvc.redis_wakeups`; the reads that woken requests share, `memsvc.shared_reads`.
"""

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, assert_never

from memsvc.context import message_id
from memsvc.errors import TooManyStreams
from memsvc.shared_reads import SharedReads

if TYPE_CHECKING:
    from memsvc.settings import Settings

Kind = Literal['message', 'message_deleted', 'truncated', 'cleared', 'deleted']
KINDS: frozenset[str] = frozenset(('message', 'message_deleted', 'truncated', 'cleared', 'deleted'))

POLL_SECONDS = 1.0
"""While wake-ups cannot be trusted (Chroma with several processes, a Redis subscription being restored), a
waiting request re-reads this often: a write through any replica reaches it within this time."""
MAX_PENDING = 1024
"""Changes a listener keeps until its request takes them; past it the oldest go (a message's wake-up is implied
by the re-read anyway)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One write to a session, as a wake-up carries it. `number` is the last new id (`message`), the id removed
    (`message_deleted`), the id the tail was cut after (`truncated`), 0 otherwise."""

    kind: Kind
    number: int = 0

    def encode(self) -> bytes:
        return self.kind.encode() if self.kind in ('cleared', 'deleted') else f'{self.kind} {self.number}'.encode()

    @classmethod
    def decode(cls, raw: bytes) -> 'Change | None':
        kind, _, number = raw.decode(errors='replace').partition(' ')
        if kind not in KINDS:
            return None
        try:
            return cls(kind, int(number) if number else 0)  # type: ignore[arg-type]
        except ValueError:
            return None


SessionKey = tuple[str, str]
"""(tenant, session id)."""


class Listener:
    """A waiting request's view of one session: the changes since it last looked, and whether a wake-up came since.

    A wait is one future, and its deadline (a stream's keep-alive, a long-poll's end) one timer that outlives the
    wait: a stream woken again and again moves its deadline later each time, and the timer, when it fires early,
    sets itself for the new deadline rather than being cancelled and made again at every wake-up. (An
    `asyncio.Event` under `asyncio.timeout` made an `asyncio.Timeout`, a timer and the event's future at every wait
    and cancelled them at every wake-up: with a thousand streams woken by one append, a tenth of the process.)"""

    __slots__ = ('_deadline', '_timer', '_timer_at', '_waiter', '_woken', 'changes', 'key')

    def __init__(self, key: SessionKey) -> None:
        self.key = key
        self.changes: deque[Change] = deque(maxlen=MAX_PENDING)
        self._woken = False
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline = self._timer_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def push(self, change: Change | None) -> None:
        """Record `change` (None: only wake, e.g. after a subscription came back) and wake the request."""
        if change is not None:
            self.changes.append(change)
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait(self, seconds: float) -> bool:
        """Until woken (True) or `seconds` pass (False)."""
        if self._woken:
            return True
        loop = asyncio.get_running_loop()
        self._deadline = deadline = loop.time() + seconds
        if self._timer is None or self._timer_at > deadline:
            self._arm(loop, deadline)
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None

    def take(self) -> list[Change]:
        """The changes since the last call; the next `wait` waits for a new wake-up."""
        self._woken = False
        taken = list(self.changes)
        self.changes.clear()
        return taken

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire, loop), when

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait now: the next one sets its own
        if self._deadline > self._timer_at:
            self._arm(loop, self._deadline)  # set for an earlier wait; this one ends later
        else:
            waiter.set_result(False)


class Broker:
    """What brings other processes' writes: subscribed to the sessions that listeners wait on."""

    healthy: bool
    """False while the wake-ups may miss writes (then listeners poll)."""

    async def start(self, deliver: Callable[[SessionKey, Change | None], None]) -> None: ...
    async def subscribe(self, key: SessionKey) -> None: ...
    def unsubscribe(self, key: SessionKey) -> None: ...
    async def close(self) -> None: ...


class Hub:
    """This process's listeners by session, the count of open streams, and the way wake-ups reach them.

    `local`: the manager's `notify` wakes listeners here (in_memory, Chroma); otherwise the store publishes and
    the `broker` delivers (Redis). `poll` says that other processes write without waking this one (Chroma in
    server mode), so listeners re-read every `POLL_SECONDS`.
    """

    def __init__(
        self, *, local: bool = True, broker: Broker | None = None, poll: bool = False, max_streams: int = 10_000
    ) -> None:
        self.local, self.broker, self._poll, self.max_streams = local, broker, poll, max_streams
        self._listeners: dict[SessionKey, set[Listener]] = {}
        self.reads = SharedReads()
        """The store reads that this process's woken listeners share: one per session and range per wake-up."""
        self.open_streams = 0
        self.closing = False

    async def start(self) -> None:
        if self.broker is not None:
            await self.broker.start(self.deliver)

    async def close(self) -> None:
        self.shutdown()
        if self.broker is not None:
            await self.broker.close()

    def shutdown(self) -> None:
        """The process is stopping: every waiting request answers now (streams end, long-polls answer `[]`)."""
        self.closing = True
        self.wake_all()

    @property
    def poll_seconds(self) -> float | None:
        """How often a listener must re-read without a wake-up; None: wake-ups are enough."""
        if self._poll or (self.broker is not None and not self.broker.healthy):
            return POLL_SECONDS
        return None

    def notify(self, tenant: str, session_id: str, change: Change) -> None:
        """Called by the manager after a write (it checks `local` first)."""
        self.deliver((tenant, session_id), change)

    def appended(self, tenant: str, session_id: str, messages: list[bytes]) -> None:
        """`notify` of an append, on the append path: nothing is built unless a request waits on the session."""
        key = (tenant, session_id)
        listeners = self._listeners.get(key)
        if listeners:
            self.reads.forget(key)
            change = Change('message', message_id(messages[-1]))
            for listener in listeners:
                listener.push(change)

    def deliver(self, key: SessionKey, change: Change | None) -> None:
        listeners = self._listeners.get(key)
        if listeners:
            self.reads.forget(key)  # before any listener runs: each reads after this wake-up (`shared_reads`)
            for listener in listeners:
                listener.push(change)

    def wake_all(self) -> None:
        self.reads.forget_all()
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.push(None)

    @contextlib.asynccontextmanager
    async def listen(self, tenant: str, session_id: str, *, stream: bool = False) -> AsyncIterator[Listener]:
        """A listener for the session while the block runs; subscribed before the block starts, so a write made
        after the caller's first read wakes it. `stream` counts it against `max_streams` (TooManyStreams)."""
        if stream:
            if self.open_streams >= self.max_streams:
                raise TooManyStreams(self.max_streams)
            self.open_streams += 1
        key = (tenant, session_id)
        listener = Listener(key)
        try:
            listeners = self._listeners.get(key)
            if listeners is None:
                listeners = self._listeners[key] = set()
                listeners.add(listener)
                if self.broker is not None:
                    await self.broker.subscribe(key)
            else:
                listeners.add(listener)
            yield listener
        finally:
            listener.close()
            if stream:
                self.open_streams -= 1
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[key]
                    self.reads.forget(key)  # no wake-up forgets for a session nobody waits on
                    if self.broker is not None:
                        self.broker.unsubscribe(key)

    def listening(self) -> int:
        """Sessions with a listener in this process."""
        return len(self._listeners)


@contextlib.asynccontextmanager
async def open_hub(settings: 'Settings', store: object) -> AsyncIterator[Hub]:
    """The hub for the opened `store`: subscribed to Redis on a Redis store, local otherwise; closed at the end."""
    match settings.memory_type:
        case 'redis':
            from memsvc.redis_wakeups import RedisWakeups
            from memsvc.stores.redis import RedisStore

            assert isinstance(store, RedisStore)
            broker = RedisWakeups(store.client, settings.key_prefix, f'memsvc:{os.getpid()}')
            hub = Hub(local=False, broker=broker, max_streams=settings.max_streams)
        case 'chroma':
            hub = Hub(poll=settings.chroma_host is not None, max_streams=settings.max_streams)
        case 'in_memory':
            hub = Hub(max_streams=settings.max_streams)
        case _:
            assert_never(settings.memory_type)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()
