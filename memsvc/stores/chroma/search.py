"""Semantic search over the messages collection: best first, `score` = cosine similarity (1 - cosine distance).

Chroma's metadata filters are slow on a large collection, far slower than an unfiltered query of its index, so
neither path uses one when it can help it: a session of up to `EXACT_SEARCH_MAX` messages is scored exactly from its
own vectors, fetched by id; a search of all sessions asks the index for more neighbours than needed and keeps the
tenant's, and only falls back to a filtered query when that finds too few (a small tenant among large ones). Only
messages a live session stores (inside its range, outside its gaps) are answered, so an interrupted delete, clear
or truncation never shows ghosts.
"""

import heapq

from memsvc.models import SearchHit
from memsvc.stores.chroma.codec import (
    Layout,
    Meta,
    SessionRow,
    Where,
    as_int,
    join_message,
    message_record_id,
    session_record_id,
    where,
)
from memsvc.stores.chroma.operations import Chroma, Vectors, chunks
from memsvc.stores.chroma.transport import Transport

EXACT_SEARCH_MAX = 2000
"""A session with at most this many messages is searched exactly, from its own vectors (fetched by id)."""
UNFILTERED_MAX = 640
"""The most neighbours a search of all sessions asks the index for before it falls back to a filtered query."""
SEARCH_MARGIN = 10
"""Extra hits fetched per search, to make up for hits dropped as outside a live session."""


class Search:
    def __init__(self, transport: Transport, layout: Layout) -> None:
        self._run = transport.run
        self._layout = layout

    async def search(
        self, tenant: str, vector: Vectors, *, limit: int, session: SessionRow | None, role: str | None
    ) -> list[SearchHit]:
        """The best `limit` messages for the query's `vector`, of `session` (None: of every session of the tenant)
        and of `role` (None: any)."""
        if session is not None and session.count <= EXACT_SEARCH_MAX:
            return await self._exact(tenant, session, vector, limit, role)
        want = limit + SEARCH_MARGIN
        while session is None and want <= UNFILTERED_MAX:
            hits, exhausted = await self._query(tenant, vector, want, None, role, limit)
            if len(hits) >= limit or exhausted:
                return hits
            want *= 4
        clauses: list[Where] = [{'tenant': tenant}]
        if session is not None:
            clauses.append({'session_id': session.record.id})
        if role is not None:
            clauses.append({'role': role})
        hits, _ = await self._query(tenant, vector, limit + SEARCH_MARGIN, where(*clauses), role, limit)
        return hits

    async def _exact(
        self, tenant: str, session: SessionRow, vector: Vectors, limit: int, role: str | None
    ) -> list[SearchHit]:
        """Every message of the session scored against `vector` (all vectors are unit length: cosine = dot)."""
        sid = session.record.id
        ids = [message_record_id(tenant, sid, seq) for seq in session.stored_ids(session.first_id, session.next_id)]
        scored: list[tuple[float, int, Meta, str | None]] = []
        for chunk in chunks(ids):
            found = await self._run(
                Chroma.get, self._layout.messages, ids=chunk, include=('embeddings', 'metadatas', 'documents')
            )
            if found.embeddings is None or len(found.embeddings) == 0:
                continue
            scores = found.embeddings @ vector
            for score, meta, document in zip(scores, found.metadatas, found.documents, strict=True):
                if role is None or meta['role'] == role:
                    scored.append((float(score), as_int(meta['seq']), meta, document))
        best = heapq.nlargest(limit, scored, key=lambda row: (row[0], row[1]))
        return [SearchHit(sid, join_message(meta, document)[1], score) for score, _, meta, document in best]

    async def _query(
        self, tenant: str, vector: Vectors, want: int, within: Where | None, role: str | None, limit: int
    ) -> tuple[list[SearchHit], bool]:
        """The index's `want` nearest neighbours (`within` a filter), keeping only this tenant's live messages of
        `role`; and whether the index had no more to give."""
        found = await self._run(Chroma.query, self._layout.messages, vector=vector, n_results=want, where=within)
        exhausted = len(found.metadatas) < want
        mine: list[tuple[Meta, str | None, float]] = [
            (meta, document, distance)
            for meta, document, distance in zip(found.metadatas, found.documents, found.distances, strict=True)
            if meta['tenant'] == tenant and (role is None or meta['role'] == role)
        ]
        if not mine:
            return [], exhausted
        session_ids = sorted({str(meta['session_id']) for meta, _, _ in mine})
        records = await self._run(
            Chroma.get, self._layout.sessions, ids=[session_record_id(tenant, sid) for sid in session_ids]
        )
        rows = {row.record.id: row for row in map(SessionRow.from_metadata, records.metadatas)}
        hits = []
        for meta, document, distance in mine:
            sid = str(meta['session_id'])
            seq, message, _ = join_message(meta, document)
            row = rows.get(sid)
            if row is not None and row.holds(seq):
                hits.append(SearchHit(sid, message, 1.0 - distance))
        return hits[:limit], exhausted
