"""The storage contract. Stores know storage only: rules live in the manager, HTTP in the routes.

Absence is reported as `None`/`False`, never raised; a backend that cannot answer raises
`BackendUnavailable` (translated inside the store, so nothing above it sees a client library's
exceptions). Every method takes the tenant, and every store keys its data by (tenant, session id).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from memsvc.models import SearchHit, SessionRecord, StoredSession

ListCursor = tuple[int, str]
"""A position in the listing: (updated_at in microseconds, session id). Order: both descending."""


@dataclass(slots=True, frozen=True)
class MessageRange:
    """Which messages to read. Ids are ordered; `after` pages forward, otherwise the newest come first.

    Without `after`, `limit` takes the last N messages below `before` (if any); with `after`, it takes
    the first N above it. The result is always oldest first.
    """

    limit: int | None = None
    before: int | None = None
    after: int | None = None


class Store(Protocol):
    async def ping(self) -> None:
        """Return when the backend answers; raise `BackendUnavailable` otherwise."""

    async def create_session(self, tenant: str, record: SessionRecord) -> bool:
        """Create `record` unless its id exists (then return False and change nothing)."""

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None: ...

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool
    ) -> tuple[list[StoredSession], bool]:
        """Up to `limit` sessions, newest `updated_at` first, starting after the `after` position, and
        whether more follow."""

    async def update_metadata(
        self, tenant: str, session_id: str, apply: Callable[[bytes], bytes], now: datetime
    ) -> SessionRecord | None:
        """Replace the metadata with `apply(current)` atomically; `apply` may raise to abort."""

    async def delete_session(self, tenant: str, session_id: str) -> bool: ...

    async def append_messages(self, tenant: str, session_id: str, bodies: list[bytes], now: datetime) -> list[bytes]:
        """Append messages encoded by `models.encode_message` in one atomic step, creating the session if
        it is missing, and return them as stored: with their ids (`models.with_id`)."""

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> list[bytes] | None: ...

    async def clear_messages(self, tenant: str, session_id: str, now: datetime) -> bool:
        """Remove every message; the session and its metadata stay. Ids are never reused."""

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        """Semantic search, best first; stores without it raise `NotSupported`."""
