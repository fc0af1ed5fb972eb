"""Picks, opens and closes the configured store. Backends are imported lazily: an install without
the `chroma` extra runs the other stores."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import assert_never

from memsvc.errors import NotSupported
from memsvc.settings import Settings
from memsvc.stores.base import ListCursor, MessageRange, Store

__all__ = ['ListCursor', 'MessageRange', 'Store', 'open_store']


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """Open the store for `settings`; raises `BackendUnavailable` when its backend does not answer."""
    match settings.memory_type:
        case 'in_memory':
            from memsvc.stores.memory import MemoryStore

            yield MemoryStore(max_messages=settings.max_messages_per_session)
        case 'redis':
            from memsvc.stores.redis import RedisStore, create_client

            client = create_client(settings)
            try:
                store = RedisStore(client, settings)
                await store.open(settings.redis_url)
                yield store
            finally:
                await client.aclose()
        case 'chroma':
            raise NotSupported(f'MEMORY_TYPE={settings.memory_type} is not available in this version of memsvc')
        case _:
            assert_never(settings.memory_type)
