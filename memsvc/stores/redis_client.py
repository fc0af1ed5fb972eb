"""The Redis client made from the settings. How calls are sent is `redis_transport.py`'s business, what is
stored where `redis.py`'s."""

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from memsvc.errors import BackendUnavailable
from memsvc.settings import Settings

CLUSTER_SCHEMES = {'redis+cluster': 'redis', 'rediss+cluster': 'rediss'}
"""`REDIS_URL=redis+cluster://host:port` (or `rediss+cluster://`) connects to a Redis Cluster through
any one of its nodes."""

Client = Redis | RedisCluster


def masked_url(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ''
    host = parts.hostname or ''
    if ':' in host:
        host = f'[{host}]'
    netloc = f'{user}:***@{host}' + (f':{parts.port}' if parts.port is not None else '')
    return urlunsplit(parts._replace(netloc=netloc))


def create_client(settings: Settings) -> Client:
    """A client for `settings.redis_url` with bounded, explicit limits (see the `redis_*` settings).

    A single Redis gets a `BlockingConnectionPool`: when all connections are busy a request waits up to
    `redis_pool_timeout` for one instead of failing at once (redis-py's default pool raises "Too many
    connections"). Commands are never retried by the client: a write whose reply was lost may have
    been applied, so the caller gets 503 and decides. Each connection is named `memsvc:<pid>`.
    """
    scheme, _, rest = settings.redis_url.partition('://')
    common: dict[str, Any] = {
        'socket_connect_timeout': settings.redis_connect_timeout,
        'socket_timeout': settings.redis_socket_timeout,
        'client_name': f'memsvc:{os.getpid()}',
        'retry': Retry(NoBackoff(), 0),
    }
    try:
        if scheme in CLUSTER_SCHEMES:
            # `ClusterTransport` runs at most `redis_max_connections` calls at once, each holding at most one
            # connection per node; past this limit redis-py would fail at once, so it keeps a margin.
            return RedisCluster.from_url(
                f'{CLUSTER_SCHEMES[scheme]}://{rest}', max_connections=2 * settings.redis_max_connections, **common
            )
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout,
            **common,
        )
        return Redis.from_pool(pool)
    except (ValueError, RedisError, RedisClusterException) as exc:
        raise BackendUnavailable(f'REDIS_URL {masked_url(settings.redis_url)} cannot be used: {exc}') from None
