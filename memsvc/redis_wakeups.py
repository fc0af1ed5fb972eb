"""The Redis subscription that brings every replica's writes to this process's hub (`memsvc.events`): `RedisWakeups`,
one per process, subscribed to the sessions its listeners wait on.

Why Redis pub/sub, and how:
- Pub/sub rather than keyspace notifications: those need `notify-keyspace-events` set on the server (often not
  allowed on a managed Redis), fire for every command on every key, and carry no payload (a truncation's
  `after`). Rather than Redis Streams: the store is already the log a reader catches up from; a stream per
  session would be a second copy to trim and expire, and XREAD BLOCK needs a connection per blocked read or a
  poll. Pub/sub delivers only to processes that listen, and losing a message is harmless here.
- One channel per session, `{p}:{<tenant>/<id>}:events`, in the session's hash tag. A process subscribes to a
  session's channel while a request of its waits on that session (the first listener subscribes and waits for
  the acknowledgement before it reads, so no write can fall between its read and its subscription), and
  unsubscribes when the last one goes: Redis sends a replica only the writes it waits for.
- Sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7.0+) wherever the server has it: on Cluster a shard channel
  lives on the node of its slot, and since the channel shares the session's hash tag, the script that writes the
  session may publish to it (a plain PUBLISH on Cluster would be broadcast over the cluster bus to every node).
  On Redis before 7.0 the scripts fall back to PUBLISH and the subscriber to SUBSCRIBE (`RedisWakeups` asks the
  server's version at start); on such a Cluster the message then reaches every node, and the subscriber listens
  on the node of the channel's slot all the same.
- Connections: one per process on a single Redis; on Cluster one per primary node that owns a channel this
  process listens on (shard channels can only be read from their node). Each is opened beside the store's pool,
  not taken from it. When one fails (a Redis restart, a failover) it is opened again, with a back-off, and its
  channels subscribed again; meanwhile every listener re-reads every `POLL_SECONDS`, and once the subscription
  is back every listener is woken to re-read. On Cluster a failure, or a slot that moves (Redis then
  unsubscribes the channel itself), refreshes the slot map before the channels are subscribed again.
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memsvc.events import Broker, Change, SessionKey

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection

log = logging.getLogger('memsvc.events')

HEALTH_SECONDS = 5.0
"""An idle subscription is checked with a PING after this long; no answer within as long again: reconnect."""
SUBSCRIBE_TIMEOUT_SECONDS = 2.0
"""How long the first listener of a session waits for Redis to acknowledge its subscription; past it the listener
polls until the subscription is back."""
STOP_SECONDS = 2.0
RETRY_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0)


class _Link:
    """One subscribed connection (a single Redis, or one Cluster node) and the channels it should hold."""

    def __init__(self, wakeups: 'RedisWakeups', name: str, connect: Callable[[], 'AbstractConnection']) -> None:
        self.wakeups, self.name, self._connect = wakeups, name, connect
        self.channels: set[bytes] = set()
        self.acked: set[bytes] = set()
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.connection: AbstractConnection | None = None
        self.ready = False
        """Connected, and every channel added from now on is subscribed by `subscribe` itself."""
        self.up = False
        self.verbs = SHARDED
        self._answered = False
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f'memsvc-events-{self.name}')

    async def stop(self) -> None:
        """Stop the reader: by closing its connection as well as by cancelling it. A cancel alone did not always
        stop it in the test suite (it went on to a new read, on Python 3.11 with redis-py 8.1); with the
        connection closed the read ends, and `_run` sees `stopping` and returns."""
        self.stopping = True
        task = self.task
        if task is not None:
            task.cancel()
        await self._drop()
        if task is not None:
            await asyncio.wait({task}, timeout=STOP_SECONDS)

    async def subscribe(self, channel: bytes) -> None:
        self.channels.add(channel)
        if channel in self.acked:
            return
        future = self.waiting.get(channel)
        if future is None:
            future = self.waiting[channel] = asyncio.get_running_loop().create_future()
            if self.ready:
                await self._send(self.verbs[0], channel)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                await asyncio.shield(future)

    def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self.acked.discard(channel)
        if self.ready:
            task = asyncio.ensure_future(self._send(self.verbs[1], channel))
            self.wakeups.background(task)

    async def _send(self, *command: Any) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            await connection.send_command(*command, check_health=False)
        except Exception as exc:  # the reader sees the broken connection too, and reconnects
            log.debug('could not send %s to Redis: %s', command[0], exc)

    async def _drop(self) -> None:
        connection, self.connection = self.connection, None
        self.up = self.ready = False
        self.acked.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    async def _run(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.up or attempt == 0:
                    log.warning('the Redis subscription for wake-ups (%s) failed: %s; reconnecting', self.name, exc)
            await self._drop()
            if self.stopping:
                return
            self.wakeups.link_down(self)
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1
            if attempt > 1:
                await self.wakeups.refresh()

    async def _serve(self) -> None:
        connection = self._connect()
        self.connection = connection
        await connection.connect()
        await connection.send_command('INFO', 'server', check_health=False)
        self.verbs = _verbs(await connection.read_response())
        subscribe = self.verbs[0]
        self.ready = True
        wanted = sorted(self.channels)  # a channel added from now on is subscribed by `subscribe`
        for channel in wanted:  # one per command: on Cluster the channels of one node may be in several slots
            await connection.send_command(subscribe, channel, check_health=False)
        if not wanted:
            self._became_up()
        health = asyncio.create_task(self._check_health(connection))
        try:
            while True:
                # No timeout on the read itself: a read cancelled by its own timeout while the task is cancelled
                # from outside lost the outer cancel here (Python 3.11), and the link never stopped.
                reply = await connection.read_response(timeout=math.inf, disconnect_on_error=False)
                self._answered = True
                self._handle(reply, wanted)
        finally:
            health.cancel()

    async def _check_health(self, connection: 'AbstractConnection') -> None:
        """PING after HEALTH_SECONDS without a reply; no reply to it within as long again: close the connection,
        which ends the read with an error (and the link reconnects)."""
        pinged = False
        while True:
            self._answered = False
            await asyncio.sleep(HEALTH_SECONDS)
            if self._answered:
                pinged = False
                continue
            if pinged:
                log.warning('the Redis subscription for wake-ups (%s) did not answer a PING; reconnecting', self.name)
                await connection.disconnect(nowait=True)
                return
            await self._send('PING')
            pinged = True

    def _became_up(self) -> None:
        if not self.up:
            self.up = True
            self.wakeups.link_up(self)

    def _handle(self, reply: Any, wanted: list[bytes]) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind in (b'message', b'smessage') and len(reply) == 3:
            key = self.wakeups.keys.get(reply[1])
            if key is not None:
                self.wakeups.deliver(key, Change.decode(reply[2]))
        elif kind in (b'subscribe', b'ssubscribe'):
            channel = reply[1]
            if channel in self.channels:
                self.acked.add(channel)
            future = self.waiting.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
            if not self.up and self.acked >= set(wanted) & self.channels:
                self._became_up()
        elif kind in (b'unsubscribe', b'sunsubscribe'):
            channel = reply[1]
            self.acked.discard(channel)
            if channel in self.channels:  # not ours: on Cluster its slot moved to another node
                self.wakeups.moved(self, channel)


SHARDED = ('SSUBSCRIBE', 'SUNSUBSCRIBE')
CLASSIC = ('SUBSCRIBE', 'UNSUBSCRIBE')


def _verbs(info: Any) -> tuple[str, str]:
    """Sharded pub/sub from Redis 7.0 on (the scripts' SPUBLISH works there), the classic one before."""
    text = info.decode(errors='replace') if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith('redis_version:'):
            major = line.partition(':')[2].split('.')[0]
            return SHARDED if major.isdigit() and int(major) >= 7 else CLASSIC
    return SHARDED


class RedisWakeups(Broker):
    """The subscriber of one process: see the module docstring. `prefix` is `MEMSVC_KEY_PREFIX`."""

    def __init__(self, client: 'Redis | RedisCluster', prefix: str, client_name: str) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster

        self._prefix, self._name = prefix, client_name
        self._single: Redis | None = None if isinstance(client, RedisCluster) else client
        self._nodes: RedisCluster | None = client if isinstance(client, RedisCluster) else None
        self._cluster = self._nodes is not None
        self.keys: dict[bytes, SessionKey] = {}
        self._links: dict[str, _Link] = {}
        self._owner: dict[bytes, _Link] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._deliver: Callable[[SessionKey, Change | None], None] = lambda key, change: None
        self.healthy = True

    def channel(self, key: SessionKey) -> bytes:
        """`{p}:{<tenant>/<id>}:events`, the channel the session's scripts publish to (`redis_scripts.NOTIFY`)."""
        from memsvc.stores.redis_reads import RedisKeys

        return RedisKeys(self._prefix, key[0]).events(key[1]).encode()

    async def start(self, deliver: Callable[[SessionKey, Change | None], None]) -> None:
        self._deliver = deliver
        if not self._cluster:
            self._link('redis')

    def _link(self, name: str) -> _Link:
        link = self._links.get(name)
        if link is None:
            link = self._links[name] = _Link(self, name, lambda: self._connection(name))
            link.start()
        return link

    def _connection(self, name: str) -> 'AbstractConnection':
        """A new connection like the store's (same URL, credentials, TLS, timeouts) speaking RESP2, whose
        subscribed replies are plain arrays."""
        if self._single is not None:
            pool = self._single.connection_pool
            kwargs = {**pool.connection_kwargs, 'protocol': 2, 'client_name': f'{self._name}:events'}
            connection: AbstractConnection = pool.connection_class(**kwargs)
            return connection
        assert self._nodes is not None
        node = self._nodes.get_node(node_name=name)
        if node is None:
            raise ConnectionError(f'Redis Cluster node {name} is gone')
        kwargs = {**node.connection_kwargs, 'protocol': 2, 'client_name': f'{self._name}:events'}
        return node.connection_class(**{'host': node.host, 'port': node.port, **kwargs})

    def _link_for(self, channel: bytes) -> _Link:
        if self._nodes is None:
            return self._links['redis']
        node = self._nodes.get_node_from_key(channel.decode())
        if node is None:
            raise ConnectionError('the Redis Cluster has no node for a channel (its slots are not all served)')
        return self._link(node.name)

    async def subscribe(self, key: SessionKey) -> None:
        channel = self.channel(key)
        self.keys[channel] = key
        link = self._owner[channel] = self._link_for(channel)
        await link.subscribe(channel)

    def unsubscribe(self, key: SessionKey) -> None:
        channel = self.channel(key)
        self.keys.pop(channel, None)
        link = self._owner.pop(channel, None)
        if link is not None:
            link.unsubscribe(channel)

    def deliver(self, key: SessionKey, change: Change | None) -> None:
        self._deliver(key, change)

    def background(self, task: 'asyncio.Future[Any]') -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def link_down(self, link: _Link) -> None:
        if self.healthy:
            self.healthy = False
        self._wake_all()

    def link_up(self, link: _Link) -> None:
        self.healthy = all(other.up for other in self._links.values())
        self._wake_all()  # whatever was written while the subscription was down is read now

    def _wake_all(self) -> None:
        for key in list(self.keys.values()):
            self._deliver(key, None)

    def moved(self, link: _Link, channel: bytes) -> None:
        """Cluster: Redis unsubscribed `channel` (its slot moved): learn the new slot map, subscribe there."""
        link.channels.discard(channel)
        self.background(asyncio.ensure_future(self._move(channel)))

    async def _move(self, channel: bytes) -> None:
        await self.refresh()
        key = self.keys.get(channel)
        if key is not None:
            self._deliver(key, None)
            await self.subscribe(key)

    async def refresh(self) -> None:
        """Cluster: read the slot map again and put every channel on the link of its node now."""
        if self._nodes is None:
            return
        try:
            await self._nodes.nodes_manager.initialize()
        except Exception as exc:
            log.debug('could not refresh the Redis Cluster slots: %s', exc)
            return
        for channel, old in list(self._owner.items()):
            try:
                new = self._link_for(channel)
            except Exception:
                continue
            if new is not old:
                old.unsubscribe(channel)
                self._owner[channel] = new
                self.background(asyncio.ensure_future(new.subscribe(channel)))

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.stop()
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
