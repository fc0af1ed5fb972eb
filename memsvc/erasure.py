"""Erasure: every session of a tenant whose metadata holds a filter's values goes, with all it holds.

`DELETE /api/v1/chat/sessions?metadata.user_id=123` (README, "Erasing one person's sessions"). The sessions are
found through the metadata index, the way the filtered listing finds them (`Store.list_sessions(where=...)`), and
erased in bounded steps: a page of at most `batch` of them (the first page, again each time: what was erased has
left the index), erased together (`Store.erase_session` each, concurrently: on a single Redis they travel in one
pipeline), then a rest as long as the step (`REST`), in which the other requests run. It ends when the index finds
none.

Nothing is remembered between steps but the count, so a stopped erasure (a 503, a lost connection, a crash) leaves
the sessions it had not reached where the index still finds them, and the same request again finishes the job. An
erasure also takes the sessions' idempotency records, which a single delete keeps (they hold what the writes
answered); a session created while an erasure runs, with the filter's values, may go too.
"""

import asyncio
from collections.abc import Callable

from memsvc.stores.base import Store
from memsvc.stores.index import Where

REST = 1.0
"""After each step, the erasure waits this many times as long as the step took: it takes at most half of the
process's time (less, as a step's time includes the store's), and the other requests the rest. With 0 (only a turn
of the event loop between steps), get-last-20 on Redis ran at 0.73 x its undisturbed req/s during an erasure of
10,000 sessions (bench/erasure.py)."""


async def erase(store: Store, tenant: str, where: Where, *, batch: int, erased: Callable[[str], None]) -> int:
    """Erase the tenant's sessions that hold every entry of `where` (not empty: the caller refuses that) and return
    how many this call erased; `erased(session_id)` is called for each, after it went."""
    assert where, 'an erasure needs a filter'
    count = 0
    missed: set[str] = set()
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        page, _ = await store.list_sessions(tenant, limit=batch, after=None, with_messages=False, where=where)
        ids = [found.record.id for found in page]
        if not ids or missed.issuperset(ids):  # none left, or only sessions deleted by someone else meanwhile
            return count
        steps = (store.erase_session(tenant, session_id) for session_id in ids)
        done = await asyncio.gather(*steps, return_exceptions=True)
        for session_id, gone in zip(ids, done, strict=True):
            if gone is True:
                count += 1
                erased(session_id)
            elif gone is False:
                missed.add(session_id)
        for failed in done:  # after the others' events: they went
            if isinstance(failed, BaseException):
                raise failed
        await asyncio.sleep((loop.time() - started) * REST)  # the other requests' turn
