"""Shared fixtures. Every store-contract and API test runs once per store in `STORE_KINDS`.

Backends are real servers the suite starts itself on free loopback ports (see `servers.py`).
"""

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from memsvc.app import create_app
from memsvc.settings import Settings
from memsvc.stores import Store, open_store
from tests.chroma_server import ChromaServer, chroma_server
from tests.conformance import CheckedClient, Conformance
from tests.helpers import is_memsvc_variable
from tests.servers import RedisClusterServers, RedisServer, own_redis, redis_cluster, redis_server

# fixtures, re-exported so that pytest finds them
__all__ = ['chroma_server', 'own_redis', 'redis_cluster', 'redis_server']

STORE_KINDS = ['in_memory', 'redis', 'redis_cluster', 'chroma', 'chroma_server']

_KEY_PREFIX = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _without_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the memsvc variables of the shell that runs pytest (`MEMSVC_*`, `MEMORY_TYPE`,
    `REDIS_*`, `CHROMA_*`): a `Settings()` built in a test, and a memsvc process given `os.environ`, see
    the defaults and what the test itself sets. Restored after the test."""
    for name in [name for name in os.environ if is_memsvc_variable(name)]:
        monkeypatch.delenv(name)


def key_prefix_for(request: pytest.FixtureRequest) -> str:
    """The key prefix of the running test: every test sees only its own Redis data."""
    stash: pytest.Stash = request.node.stash
    if _KEY_PREFIX not in stash:
        stash[_KEY_PREFIX] = f'test-{uuid.uuid4().hex[:16]}'
    return stash[_KEY_PREFIX]


def make_settings(kind: str, request: pytest.FixtureRequest, **overrides: Any) -> Settings:
    """Settings for a store of `kind`, pointing at the servers this test session started. Within one
    test, every call for a Redis kind uses the same key prefix, so two apps built from them share data.

    Redis client timeouts are generous here (the defaults of 0.5 s to connect or to get a pooled
    connection failed tests on a loaded CI machine that were not about timeouts); the outage tests
    build their settings with the production defaults."""
    values: dict[str, Any] = {'memory_type': kind}
    if kind in ('redis', 'redis_cluster'):
        values.update(redis_connect_timeout=5, redis_pool_timeout=5, redis_socket_timeout=10)
    if kind == 'redis':
        server: RedisServer = request.getfixturevalue('redis_server')
        values.update(redis_url=server.url, key_prefix=key_prefix_for(request))
    elif kind == 'redis_cluster':
        cluster: RedisClusterServers = request.getfixturevalue('redis_cluster')
        values.update(memory_type='redis', redis_url=cluster.url, key_prefix=key_prefix_for(request))
    elif kind == 'chroma':  # embedded and persistent, in the test's own directory
        directory = request.getfixturevalue('tmp_path') / 'chroma'
        values.update(chroma_persist_directory=directory, key_prefix=key_prefix_for(request))
    elif kind == 'chroma_server':
        chroma: ChromaServer = request.getfixturevalue('chroma_server')
        values.update(memory_type='chroma', chroma_host='127.0.0.1', chroma_port=chroma.port)
        values.update(key_prefix=key_prefix_for(request))
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(store_kind: str, request: pytest.FixtureRequest) -> Settings:
    return make_settings(store_kind, request)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    async with open_store(settings) as opened:
        yield opened


@pytest.fixture
async def raw_client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    """The real app (its cleanup_ctx included) behind aiohttp's test client."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def client(raw_client: TestClient[Any, Any], settings: Settings) -> CheckedClient:
    """A client that checks every response against the app's own OpenAPI document."""
    return CheckedClient(raw_client, Conformance.for_settings(settings))
