"""How sessions, messages and idempotency records map to Chroma records. Pure: no Chroma calls here.

Two collections per `MEMSVC_KEY_PREFIX` `p` (so deployments, and tests, sharing one Chroma stay apart):

    {p}-sessions   one record per session, id `<tenant>/<session id>`, a 1-dimensional placeholder vector;
                   metadata: tenant, session_id, created_at and updated_at (µs since the epoch), metadata (the
                   session's metadata, JSON-encoded into one string), first_id, next_id, version, summary (as the
                   API answers it; '' or absent: none), gaps (`stores.gaps`: the ids between first_id and next_id
                   that are not stored, e.g. "6:11,15:16"; '' or absent: none), and `metadata.<key>` for each
                   indexed key (`MEMSVC_INDEXED_METADATA`) whose value is a string in the session's metadata: the
                   metadata index, which a filtered listing asks Chroma for (absent: no string value).
                   Also one record per Idempotency-Key, id `idempotency:<tenant>/<session id>/<key digest>`,
                   metadata: idem_tenant, idem_session, fingerprint, expires (µs) and the recorded result. It has
                   no `tenant` key, so listings never see it.
    {p}-messages   one record per message, id `<tenant>/<session id>/<message id>`, the content's vector
                   (cosine space); document: the content; metadata: tenant, session_id, role, seq (the message
                   id), timestamp (µs), rest (the stored message after its content, so that reads return the
                   exact bytes `append_messages` returned), attempt (the nonce of the append that wrote it),
                   record (`memsvc.context.record`; absent on messages stored before records were)

Chroma metadata is flat and has a fixed set of keys here (the indexed keys are the operator's few): a client's
metadata objects (of sessions and messages) are JSON-encoded into one string field, never spread into Chroma keys or
lists, so Chroma's breakage on metadata
with more than 5,461 keys or list elements cannot happen whatever a client sends. Tenants are a metadata filter
(and part of every record id).
"""

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from memsvc.errors import BackendUnavailable, NotSupported
from memsvc.models import SessionRecord, from_micros, to_micros, utc_now
from memsvc.stores import gaps as ids
from memsvc.stores.base import Idempotency, MessageRange
from memsvc.stores.index import Where as Filter
from memsvc.stores.index import entries

Meta = Mapping[str, object]
"""The metadata of one Chroma record, as Chroma returns it."""
Where = dict[str, Any]
"""A Chroma metadata filter."""

_COLLECTION_PREFIX = re.compile(r'^[A-Za-z0-9](?!.*\.\.)[A-Za-z0-9_.-]*$')
_MESSAGE_HEAD = b'{"id":%d,"role":"%s","content":'


class CollectionSpec(NamedTuple):
    """A collection and how to create it when it is missing. (A NamedTuple: every call sends one to the child.)"""

    name: str
    cosine: bool
    """The vectors are compared by cosine distance (the messages); otherwise Chroma's default (placeholders)."""


@dataclass(slots=True, frozen=True)
class Layout:
    sessions: CollectionSpec
    messages: CollectionSpec

    @classmethod
    def for_prefix(cls, prefix: str) -> 'Layout':
        """The collections of `MEMSVC_KEY_PREFIX` (a prefix Chroma cannot use is refused)."""
        if not _COLLECTION_PREFIX.fullmatch(prefix):
            raise NotSupported(
                f'MEMSVC_KEY_PREFIX {prefix!r} cannot name a Chroma collection: start with a letter or digit and use '
                "only letters, digits, '_', '-' and single '.'"
            )
        return cls(
            CollectionSpec(f'{prefix}-sessions', cosine=False), CollectionSpec(f'{prefix}-messages', cosine=True)
        )


def where(*clauses: Where) -> Where:
    """All of `clauses` (Chroma refuses an `$and` of one)."""
    return clauses[0] if len(clauses) == 1 else {'$and': list(clauses)}


INDEX_FIELD = 'metadata.'
"""The prefix of the session record's metadata index fields."""


def index_fields(metadata: bytes, indexed: Sequence[str], stale: Sequence[str] = ()) -> dict[str, str | None]:
    """The metadata index fields of a session record with this metadata: each indexed key's string value, None (which
    removes a field Chroma holds: its writes merge metadata) for an indexed key without one and for the `stale` fields
    (of keys no longer indexed)."""
    found = dict(entries(metadata, indexed))
    fields: dict[str, str | None] = {INDEX_FIELD + key: found.get(key) for key in indexed}
    fields.update((name, None) for name in stale if name.removeprefix(INDEX_FIELD) not in indexed)
    return fields


def index_clauses(filter: Filter) -> list[Where]:
    return [{INDEX_FIELD + key: value} for key, value in filter]


def session_record_id(tenant: str, session_id: str) -> str:
    return f'{tenant}/{session_id}'


def message_record_id(tenant: str, session_id: str, seq: int) -> str:
    return f'{tenant}/{session_id}/{seq}'


def idempotency_record_id(tenant: str, session_id: str, idempotency: Idempotency) -> str:
    return f'idempotency:{tenant}/{session_id}/{idempotency.key}'


def placeholder(record_id: str) -> npt.NDArray[np.float32]:
    """The vector of a record of the sessions collection: never searched, but distinct per record (HNSW copes badly
    with duplicates)."""
    return np.array([[int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=6).digest()) / 2**48]], np.float32)


def as_int(value: object) -> int:
    if not isinstance(value, int):
        raise BackendUnavailable(f'Chroma returned a record this store did not write ({value!r} is not a number)')
    return value


@dataclass(slots=True, frozen=True)
class SessionRow:
    """A session record: the session and its message ids, `first_id .. next_id - 1` but its `gaps`."""

    record: SessionRecord
    first_id: int
    next_id: int
    summary: str = ''
    """As `set_summary` stored it; empty: none."""
    gaps: ids.Gaps = ()

    @property
    def count(self) -> int:
        """How many messages it stores."""
        return self.next_id - self.first_id - ids.missing(self.gaps)

    def holds(self, message_id: int) -> bool:
        return ids.holds(self.gaps, self.first_id, self.next_id, message_id)

    def stored_ids(self, lo: int, hi: int) -> Iterator[int]:
        """Its stored ids from `lo` to `hi - 1`."""
        return ids.stored_ids(self.gaps, max(lo, self.first_id), min(hi, self.next_id))

    def selected(self, selection: MessageRange) -> tuple[int, int]:
        """The message ids lo .. hi - 1 that `selection` takes (of which the gaps are not stored): `limit` takes that
        many stored messages."""
        if self.gaps:
            return self._selected_across_gaps(selection)
        lo = self.first_id if selection.after is None else max(selection.after + 1, self.first_id)
        hi = self.next_id if selection.before is None else min(selection.before, self.next_id)
        if selection.limit is not None and hi - lo > selection.limit:
            if selection.after is None:
                lo = hi - selection.limit
            else:
                hi = lo + selection.limit
        return lo, hi

    def _selected_across_gaps(self, selection: MessageRange) -> tuple[int, int]:
        """As `selected`, by position among the stored messages."""
        gaps, first, next_id = self.gaps, self.first_id, self.next_id
        lo = 0 if selection.after is None else ids.stored_below(gaps, first, next_id, selection.after + 1)
        hi = self.count if selection.before is None else ids.stored_below(gaps, first, next_id, selection.before)
        if selection.limit is not None and hi - lo > selection.limit:
            if selection.after is None:
                lo = hi - selection.limit
            else:
                hi = lo + selection.limit
        if lo >= hi:
            return 0, 0
        return ids.id_at(gaps, first, lo), ids.id_at(gaps, first, hi - 1) + 1

    @classmethod
    def new(cls, record: SessionRecord) -> 'SessionRow':
        """A session without messages; ids start at 1."""
        return cls(record, 1, 1)

    def bumped(
        self,
        now: datetime,
        *,
        metadata: bytes | None = None,
        first_id: int | None = None,
        next_id: int | None = None,
        summary: str | None = None,
        gaps: ids.Gaps | None = None,
    ) -> 'SessionRow':
        """The row after a write at `now`: the next version, `updated_at` never earlier than it was."""
        old = self.record
        record = SessionRecord(
            id=old.id,
            created_at=old.created_at,
            updated_at=max(old.updated_at, now),
            metadata=old.metadata if metadata is None else metadata,
            version=old.version + 1,
            forked_from=old.forked_from,
        )
        return SessionRow(
            record,
            self.first_id if first_id is None else first_id,
            self.next_id if next_id is None else next_id,
            self.summary if summary is None else summary,
            self.gaps if gaps is None else gaps,
        )

    def metadata(self, tenant: str, indexed: Sequence[str]) -> dict[str, str | int | None]:
        record = self.record
        return {
            **index_fields(record.metadata, indexed),
            'tenant': tenant,
            'session_id': record.id,
            'created_at': to_micros(record.created_at),
            'updated_at': to_micros(record.updated_at),
            'metadata': record.metadata.decode(),
            'first_id': self.first_id,
            'next_id': self.next_id,
            'version': record.version,
            'summary': self.summary,
            'gaps': ids.format(self.gaps),
            'forked_from': record.forked_from.decode(),
        }

    @classmethod
    def from_metadata(cls, meta: Meta) -> 'SessionRow':
        record = SessionRecord(
            id=str(meta['session_id']),
            created_at=from_micros(as_int(meta['created_at'])),
            updated_at=from_micros(as_int(meta['updated_at'])),
            metadata=str(meta['metadata']).encode(),
            version=as_int(meta['version']),
            forked_from=str(meta.get('forked_from') or '').encode(),
        )
        first_id, next_id = as_int(meta['first_id']), as_int(meta['next_id'])
        return cls(record, first_id, next_id, str(meta.get('summary') or ''), ids.parse(str(meta.get('gaps') or '')))


@dataclass(slots=True, frozen=True)
class MessageRecords:
    """The records of messages about to be written, column by column as Chroma takes them."""

    ids: list[str]
    documents: list[str]
    metadatas: list[dict[str, str | int]]


def message_records(
    tenant: str, session_id: str, seqs: Iterable[int], stored: list[bytes], attempt: str, counts: Sequence[int]
) -> MessageRecords:
    """The records of `stored` (messages with their ids, `models.with_id`), which are `seqs`; `attempt` marks them as
    written by one write (see `store.ChromaStore`); `counts` are their records."""
    records = MessageRecords([], [], [])
    for seq, message, count in zip(seqs, stored, counts, strict=True):
        role, content, rest, timestamp = _split_message(message)
        records.ids.append(message_record_id(tenant, session_id, seq))
        records.documents.append(content)
        records.metadatas.append(
            {
                'tenant': tenant,
                'session_id': session_id,
                'role': role,
                'seq': seq,
                'timestamp': timestamp,
                'rest': rest,
                'attempt': attempt,
                'record': count,
            }
        )
    return records


def forked_records(tenant: str, target: str, found_metadatas: Sequence[Meta], attempt: str) -> MessageRecords:
    """The records of a fork's copies of `found_metadatas` (a source's message records): the same messages, documents
    and records under the new session's ids, marked with the fork's `attempt`. Documents are the caller's."""
    records = MessageRecords([], [], [])
    for meta in found_metadatas:
        seq = as_int(meta['seq'])
        records.ids.append(message_record_id(tenant, target, seq))
        records.metadatas.append({**meta, 'session_id': target, 'attempt': attempt})  # type: ignore[dict-item]
    return records


def _split_message(stored: bytes) -> tuple[str, str, str, int]:
    """(role, content, rest, timestamp µs) of a stored message; `rest` is what follows the content's JSON."""
    message = orjson.loads(stored)
    role, content = message['role'], message['content']
    head = _MESSAGE_HEAD % (message['id'], role.encode()) + orjson.dumps(content)
    if not stored.startswith(head):  # encode_message/with_id always write id, role, content first
        raise ValueError(f'a stored message does not start with its id, role and content: {stored[:80]!r}')
    timestamp = to_micros(datetime.fromisoformat(message['timestamp']))
    return role, content, stored[len(head) :].decode(), timestamp


def join_message(meta: Meta, document: str | None) -> tuple[int, bytes, int]:
    """(id, the stored message, its record or 0) of a message record: the exact bytes that `append_messages`
    returned."""
    seq = as_int(meta['seq'])
    head = _MESSAGE_HEAD % (seq, str(meta['role']).encode())
    record = meta.get('record')
    return seq, head + orjson.dumps(document or '') + str(meta['rest']).encode(), as_int(record) if record else 0


def idempotency_metadata(
    tenant: str, session_id: str, idempotency: Idempotency, result: Mapping[str, str | int]
) -> dict[str, str | int]:
    """The metadata of an Idempotency-Key's record: whose it is, until when, and the `result` it recorded."""
    return {
        'idem_tenant': tenant,
        'idem_session': session_id,
        'fingerprint': idempotency.fingerprint,
        'expires': to_micros(utc_now()) + idempotency.ttl_seconds * 1_000_000,
        **result,
    }
