"""Picks, opens and closes the configured store. Backends are imported lazily: an install without
the `chroma` extra runs the other stores."""

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import assert_never

from memsvc.errors import NotSupported
from memsvc.settings import Settings
from memsvc.stores.base import Limits, ListCursor, MessageRange, Store

__all__ = ['ListCursor', 'MessageRange', 'Store', 'open_store']


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """Open the store for `settings`; raises `BackendUnavailable` when its backend does not answer."""
    match settings.memory_type:
        case 'in_memory':
            from memsvc.stores.memory import MemoryStore

            yield MemoryStore(Limits.from_settings(settings), settings.indexed_keys())
        case 'redis':
            from memsvc.stores.redis import RedisStore
            from memsvc.stores.redis_client import create_client

            client = create_client(settings)
            try:
                store = RedisStore(client, settings)
                await store.open(settings.redis_url)
                yield store
            finally:
                await client.aclose()
        case 'chroma':
            try:
                from memsvc.stores.chroma import ChromaStore, open_chroma
            except ImportError as exc:
                raise NotSupported(
                    f'MEMORY_TYPE=chroma needs the chroma extra: pip install "memsvc[chroma]" ({exc})'
                ) from None
            executor = ThreadPoolExecutor(settings.chroma_threads, thread_name_prefix='memsvc-chroma')
            try:
                backend, embedder = await open_chroma(settings, executor)
                try:
                    chroma_store = ChromaStore(backend, embedder, executor, settings)
                    await chroma_store.open()
                    yield chroma_store
                finally:
                    await asyncio.get_running_loop().run_in_executor(executor, backend.close)
            finally:
                executor.shutdown(wait=False, cancel_futures=True)
        case _:
            assert_never(settings.memory_type)
