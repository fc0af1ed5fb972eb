"""`memsvc reindex`: rebuild the metadata index from the sessions, after `MEMSVC_INDEXED_METADATA` changed (README,
"Changing the indexed keys").

It opens the store itself, with the settings `memsvc serve` reads (the same environment: `MEMORY_TYPE`,
`REDIS_URL`, `MEMSVC_KEY_PREFIX`, the Chroma settings, `MEMSVC_INDEXED_METADATA`, the API keys), rather than asking
a running server over HTTP: the index belongs to the store, every replica of a deployment shares it, and an operator
who has just changed a setting of the deployment runs the command with that very setting. Each session's entries
become those of its stored metadata under the keys configured now (`Store.index_session`), entries under keys no
longer indexed are dropped, and a session written meanwhile by a server is indexed again as its own writes index it,
so servers may keep serving while it runs (Chroma embedded excepted: its directory is one process's, so stop the
server first).

Tenants: every tenant the API keys name (`MEMSVC_API_KEY`: the default tenant; none configured: the default tenant),
or those given with `--tenant` (a tenant whose key was removed still has sessions). The in-memory store (and Chroma
without a directory or a server) holds nothing between runs and builds its index as sessions are written, so there
it has nothing to do and says so.

On a terminal a progress bar (tqdm, on stderr) counts the sessions; otherwise a plain line every few seconds and one
per tenant at the end. Exit status 0 when every tenant was reindexed, 1 when the store failed (the reason on stderr).
"""

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from memsvc.auth import DEFAULT_TENANT
from memsvc.errors import MemsvcError
from memsvc.settings import Settings
from memsvc.stores import open_store

PLAIN_EVERY_SECONDS = 5.0


def tenants_of(settings: Settings, chosen: Sequence[str]) -> list[str]:
    """The tenants to reindex: `chosen`, or every tenant of the configured API keys (the default one without keys)."""
    if chosen:
        return list(dict.fromkeys(chosen))
    keys = settings.tenant_keys()
    return [DEFAULT_TENANT] if keys is None else list(keys)


class Progress:
    """Sessions reindexed so far: a tqdm bar on a terminal, plain lines to stderr otherwise."""

    def __init__(self, total: int) -> None:
        self.done, self.total = 0, total
        self._next = time.monotonic() + PLAIN_EVERY_SECONDS
        self._bar: Any = None
        self.plain = not sys.stderr.isatty()
        if not self.plain:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc='reindex', unit=' sessions', file=sys.stderr)

    def add(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() >= self._next:
            self._next = time.monotonic() + PLAIN_EVERY_SECONDS
            print(f'memsvc reindex: {self.done} of about {self.total} sessions so far', file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def reindex(settings: Settings, tenants: Sequence[str]) -> int:
    keys = ','.join(settings.indexed_keys())
    ephemeral = settings.memory_type == 'in_memory' or (
        settings.memory_type == 'chroma' and settings.chroma_host is None and settings.chroma_persist_directory is None
    )
    if ephemeral:
        what = 'MEMORY_TYPE=in_memory' if settings.memory_type == 'in_memory' else 'Chroma in memory'
        print(
            f'memsvc reindex: nothing to do for {what}: it keeps nothing between runs, and a server indexes the '
            f'sessions it holds under its own MEMSVC_INDEXED_METADATA as they are written (now: {keys})',
            file=sys.stderr,
        )
        return 0
    try:
        async with open_store(settings) as store:
            totals = [await store.count_sessions(tenant) for tenant in tenants]
            progress = Progress(sum(totals))
            try:
                for tenant in tenants:
                    before = progress.done
                    async for count in store.reindex(tenant):
                        progress.add(count)
                    if progress.plain:
                        print(f'memsvc reindex: tenant {tenant!r}: {progress.done - before} sessions', file=sys.stderr)
            finally:
                progress.close()
    except MemsvcError as exc:
        print(f'memsvc reindex: {exc.message}', file=sys.stderr)
        return 1
    print(f'memsvc reindex: {progress.done} sessions of {len(tenants)} tenant(s) indexed under {keys}', file=sys.stderr)
    return 0


def run(settings: Settings, tenants: Sequence[str]) -> int:
    return asyncio.run(reindex(settings, tenants_of(settings, tenants)))
