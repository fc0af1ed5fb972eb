"""`memsvc reindex` as an operator runs it, a real process against a real Redis (and Cluster): sessions written while
one key was indexed are found by a key indexed afterwards, entries of a key no longer indexed go, and only the
tenants asked for are touched."""

import subprocess
import sys
from datetime import timedelta

import pytest

from memsvc.models import SessionRecord, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from memsvc.stores.redis_client import create_client
from memsvc.stores.redis_reads import RedisKeys
from tests.conftest import make_settings
from tests.servers import clean_env

KEYS = 'alice=key-of-alice-0123456789,bob=key-of-bob-0123456789'


def reindex(settings: Settings, indexed: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        MEMORY_TYPE='redis',
        REDIS_URL=settings.redis_url,
        MEMSVC_KEY_PREFIX=settings.key_prefix,
        MEMSVC_INDEXED_METADATA=indexed,
        MEMSVC_API_KEYS=KEYS,
    )
    command = [sys.executable, '-m', 'memsvc', 'reindex', *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


async def listed(settings: Settings, tenant: str, key: str, value: str) -> list[str]:
    async with open_store(settings) as store:
        sessions, _ = await store.list_sessions(
            tenant, limit=100, after=None, with_messages=False, where=((key, value),)
        )
    return [session.record.id for session in sessions]


@pytest.mark.parametrize('kind', ['redis', 'redis_cluster'])
async def test_reindex_rebuilds_the_index_under_the_keys_configured_now(
    kind: str, request: pytest.FixtureRequest
) -> None:
    before = make_settings(kind, request, indexed_metadata='user_id')
    async with open_store(before) as store:
        for n, (tenant, session_id) in enumerate([('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1')]):
            moment = utc_now() + timedelta(seconds=n)
            metadata = b'{"user_id":"u1","team":"t1"}'
            assert await store.create_session(tenant, SessionRecord(session_id, moment, moment, metadata, 0))
    both = make_settings(kind, request, indexed_metadata='user_id,team')
    assert await listed(both, 'alice', 'team', 't1') == [], 'written while only user_id was indexed'

    done = reindex(before, 'user_id,team')
    assert done.returncode == 0, done.stderr
    assert "tenant 'alice': 2 sessions" in done.stderr, 'plain lines when stderr is no terminal'
    assert "tenant 'bob': 1 sessions" in done.stderr
    assert 'indexed under user_id,team' in done.stderr
    assert await listed(both, 'alice', 'team', 't1') == ['a2', 'a1']
    assert await listed(both, 'bob', 'team', 't1') == ['b1']
    assert await listed(both, 'alice', 'user_id', 'u1') == ['a2', 'a1']

    only = reindex(before, 'team', '--tenant', 'alice')
    assert only.returncode == 0, only.stderr
    assert 'bob' not in only.stderr
    raw = create_client(before)
    try:
        alice, bob = RedisKeys(before.key_prefix, 'alice'), RedisKeys(before.key_prefix, 'bob')
        assert not await raw.exists(alice.index.values('user_id', 'u1')), 'the key no longer indexed: its set is gone'
        assert await raw.zcard(alice.index.values('team', 't1')) == 2
        assert await raw.zcard(bob.index.values('user_id', 'u1')) == 1, 'another tenant is left as it was'
    finally:
        await raw.aclose()
    assert await listed(make_settings(kind, request, indexed_metadata='team'), 'alice', 'team', 't1') == ['a2', 'a1']


def test_reindex_of_an_in_memory_store_says_there_is_nothing_to_do() -> None:
    command = [sys.executable, '-m', 'memsvc', 'reindex', '--memory-type', 'in_memory']
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert 'nothing to do for MEMORY_TYPE=in_memory' in done.stderr


def test_reindex_against_a_redis_that_does_not_answer_exits_1_saying_so() -> None:
    from tests.servers import free_port

    env = clean_env(MEMORY_TYPE='redis', REDIS_URL=f'redis://127.0.0.1:{free_port()}/0')
    command = [sys.executable, '-m', 'memsvc', 'reindex']
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 1
    assert 'does not answer' in done.stderr
    assert 'Traceback' not in done.stderr
