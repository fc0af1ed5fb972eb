"""The Chroma store: messages stored one record each, with a vector, so that they can be searched semantically.

Modes: embedded and persistent (`CHROMA_PERSIST_DIRECTORY`), embedded and ephemeral (unset: gone when the
process ends), or a Chroma server (`CHROMA_HOST`/`CHROMA_PORT`, `chromadb.HttpClient`).

Layout: two collections per `MEMSVC_KEY_PREFIX` `p` (so deployments, and tests, sharing one Chroma stay apart):

    {p}-sessions   one record per session, id `<tenant>/<session id>`, a 1-dimensional placeholder vector;
                   metadata: tenant, session_id, created_at and updated_at (µs since the epoch), metadata (the
                   session's metadata, JSON-encoded into one string), first_id, next_id, version
    {p}-messages   one record per message, id `<tenant>/<session id>/<message id>`, the content's vector
                   (cosine space); document: the content; metadata: tenant, session_id, role, seq (the message
                   id), timestamp (µs), rest (the stored message after its content, so that reads return the
                   exact bytes `append_messages` returned)

Chroma metadata is flat and has a fixed set of keys here: a client's metadata objects (of sessions and messages)
are JSON-encoded into one string field, never spread into Chroma keys or lists, so Chroma's breakage on metadata
with more than 5,461 keys or list elements cannot happen whatever a client sends; id lists in one call are kept
far below that bound too. Tenants are a metadata filter (and part of every record id).

The session record is the commit point. A session's messages are exactly the ids `first_id .. next_id - 1`, read
by id and ordered by their stored sequence number, never by the order Chroma returns; clearing moves `first_id`
to `next_id`. An append writes (upserts) the message records first and then the session record, so a failure in
between leaves records outside the range that no read or search returns and the next append overwrites. Delete
and clear commit on the session record first and then remove the message vectors; search returns only hits
inside a live session's range, so an interrupted delete never shows ghosts, and the next DELETE of the id (even
one that answers 404) or its re-creation removes what was left.

Atomicity: Chroma has no transactions or compare-and-set. Inside one process every write to a session holds an
asyncio lock of its own (per tenant and session), so all contract guarantees hold for one process. Across
processes nothing is atomic: two processes writing the same session at the same moment can overwrite each other
(both take the same message ids; last writer wins) or both create it. Embedded Chroma therefore refuses
`--workers` > 1 (two processes on one persistent directory also see inconsistent vector indexes). Server mode
allows several memsvc processes; they are safe as long as each session is written by one process at a time
(e.g. a load balancer with session affinity); otherwise use Redis for the history.

Versions and Idempotency-Keys are checked under the same lock. An idempotency record is a record of the sessions
collection too (id `idempotency:<tenant>/<session id>/<key digest>`, without a `tenant` key, so listings never see
it), written after the messages and before the session record. A retry replays it only if the first attempt
committed: the session's range reaches past the recorded messages and the first of them carries the attempt's
nonce (a later writer that took those ids after a failed attempt left its own). Otherwise the retry writes again.

Nothing blocks the event loop. The embedding, the HTTP client of server mode and its construction run on the
store's own bounded thread pool (`MEMSVC_CHROMA_THREADS`). Embedded Chroma runs in a child process of its own
(`EmbeddedBackend`): its Rust bindings hold the GIL for the whole of a write, which would stall the loop from any
thread. A write, once started, runs to its end even if its request is cancelled (`_serialized`). Server errors,
timeouts (`MEMSVC_CHROMA_TIMEOUT`), connection failures and a dead child become `BackendUnavailable` (503); a
server that lost its collections gets them created again, and a dead child is replaced at the next call.
"""

import asyncio
import functools
import hashlib
import heapq
import multiprocessing
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

import chromadb
import httpx
import numpy as np
import numpy.typing as npt
import orjson
from chromadb.api import ClientAPI
from chromadb.api.client import Client
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError, InvalidArgumentError, NotFoundError

from memsvc.errors import (
    BackendUnavailable,
    IdempotencyKeyReused,
    NotSupported,
    SessionFull,
    SessionLimitReached,
    SessionNotFound,
)
from memsvc.models import (
    SearchHit,
    SessionRecord,
    StoredSession,
    from_micros,
    json_array,
    to_micros,
    utc_now,
    with_id,
)
from memsvc.settings import Settings
from memsvc.stores.base import Appended, Idempotency, Limits, ListCursor, MessageRange, check_version

if TYPE_CHECKING:  # imported where used: the child process of embedded Chroma needs no embedding model
    from memsvc.embeddings import Embedder, Vectors

P = ParamSpec('P')
T = TypeVar('T')

IDS_PER_CALL = 1000
"""Most ids (or records) in one Chroma call: well below Chroma's batch limit and its 5,461-element bounds."""
EXACT_SEARCH_MAX = 2000
"""A session with at most this many messages is searched exactly, from its own vectors (fetched by id)."""
UNFILTERED_MAX = 640
"""The most neighbours a search of all sessions asks the index for before it falls back to a filtered query."""
SEARCH_MARGIN = 10
"""Extra hits fetched per search, to make up for hits dropped as outside a live session."""

_COLLECTION_PREFIX = re.compile(r'^[A-Za-z0-9](?!.*\.\.)[A-Za-z0-9_.-]*$')
_MESSAGE_HEAD = b'{"id":%d,"role":"%s","content":'


def collection_names(prefix: str) -> tuple[str, str]:
    """The sessions and messages collections of `MEMSVC_KEY_PREFIX` (a prefix Chroma cannot use is refused)."""
    if not _COLLECTION_PREFIX.fullmatch(prefix):
        raise NotSupported(
            f'MEMSVC_KEY_PREFIX {prefix!r} cannot name a Chroma collection: start with a letter or digit and use '
            "only letters, digits, '_', '-' and single '.'"
        )
    return f'{prefix}-sessions', f'{prefix}-messages'


def _where(*clauses: dict[str, Any]) -> dict[str, Any]:
    return clauses[0] if len(clauses) == 1 else {'$and': list(clauses)}


def _chunks(items: Sequence[T], size: int = IDS_PER_CALL) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _placeholder(record_id: str) -> npt.NDArray[np.float32]:
    """A session record's vector: never searched, but distinct per record (HNSW copes badly with duplicates)."""
    return np.array([[int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=6).digest()) / 2**48]], np.float32)


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise BackendUnavailable(f'Chroma returned a record this store did not write ({value!r} is not a number)')
    return value


@dataclass(slots=True, frozen=True)
class _Session:
    record: SessionRecord
    first_id: int
    next_id: int

    def metadata(self, tenant: str) -> dict[str, Any]:
        record = self.record
        return {
            'tenant': tenant,
            'session_id': record.id,
            'created_at': to_micros(record.created_at),
            'updated_at': to_micros(record.updated_at),
            'metadata': record.metadata.decode(),
            'first_id': self.first_id,
            'next_id': self.next_id,
            'version': record.version,
        }

    @classmethod
    def from_metadata(cls, meta: Any) -> '_Session':
        record = SessionRecord(
            id=str(meta['session_id']),
            created_at=from_micros(int(meta['created_at'])),
            updated_at=from_micros(int(meta['updated_at'])),
            metadata=str(meta['metadata']).encode(),
            version=int(meta['version']),
        )
        return cls(record, int(meta['first_id']), int(meta['next_id']))


def _split_message(stored: bytes) -> tuple[str, str, str, int]:
    """(role, content, rest, timestamp µs) of a stored message; `rest` is what follows the content's JSON."""
    message = orjson.loads(stored)
    role, content = message['role'], message['content']
    head = _MESSAGE_HEAD % (message['id'], role.encode()) + orjson.dumps(content)
    if not stored.startswith(head):  # encode_message/with_id always write id, role, content first
        raise ValueError(f'a stored message does not start with its id, role and content: {stored[:80]!r}')
    timestamp = to_micros(datetime.fromisoformat(message['timestamp']))
    return role, content, stored[len(head) :].decode(), timestamp


def _join_message(seq: int, meta: Any, document: str | None) -> bytes:
    head = _MESSAGE_HEAD % (seq, str(meta['role']).encode())
    return head + orjson.dumps(document or '') + str(meta['rest']).encode()


Which = Literal['sessions', 'messages']


class ChildError(Exception):
    """An error raised by Chroma in the child process, carried back by name: Chroma's own exceptions do not pickle.
    `bug` says it was our call that was wrong (an invalid argument), not Chroma that failed."""

    def __init__(self, kind: str, message: str, bug: bool) -> None:
        super().__init__(kind, message, bug)
        self.kind, self.message, self.bug = kind, message, bug


def _open_collection(client: ClientAPI, name: str, which: Which) -> Collection:
    if which == 'messages':
        return client.get_or_create_collection(
            name, embedding_function=None, configuration={'hnsw': {'space': 'cosine'}}
        )
    return client.get_or_create_collection(name, embedding_function=None)


def _chroma_settings() -> ChromaSettings:
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


# --- the child process of embedded Chroma (this state exists only there) ---------------------

_child: dict[str, Any] = {}


def _child_open(path: str | None) -> None:
    """ProcessPoolExecutor initializer: the child's one client, persistent at `path` or ephemeral. (The child keeps
    its normal priority: every read and write of the store waits on it.)"""
    if path is None:
        _child['client'] = chromadb.EphemeralClient(settings=_chroma_settings())
    else:
        _child['client'] = chromadb.PersistentClient(path=path, settings=_chroma_settings())
    _child['collections'] = {}


def _child_call(name: str, which: Which | None, method: str, kwargs: dict[str, Any]) -> Any:
    """Call `method` on the collection `name` (or on the client when `which` is None) in the child."""
    client: ClientAPI = _child['client']
    collections: dict[str, Collection] = _child['collections']
    try:
        if which is None:
            return getattr(client, method)(**kwargs)
        if name not in collections:
            collections[name] = _open_collection(client, name, which)
        return getattr(collections[name], method)(**kwargs)
    except Exception as exc:
        if isinstance(exc, NotFoundError):
            collections.pop(name, None)
        bug = isinstance(exc, (InvalidArgumentError, TypeError, ValueError))
        raise ChildError(type(exc).__name__, ' '.join(str(exc).split())[:500], bug) from None


# --- where the calls run -----------------------------------------------------------------------


class Backend:
    """Runs Chroma calls off the event loop: `call('messages', 'get', ids=...)`."""

    where: str

    def __init__(self, prefix: str) -> None:
        sessions, messages = collection_names(prefix)
        self.names: dict[Which, str] = {'sessions': sessions, 'messages': messages}

    async def call(self, which: Which | None, method: str, /, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release everything (blocking: run it on the executor)."""


class ServerBackend(Backend):
    """A Chroma server through chromadb's HTTP client, on the store's thread pool (the client releases the GIL while it
    waits for the network)."""

    def __init__(self, client: ClientAPI, executor: ThreadPoolExecutor, settings: Settings) -> None:
        super().__init__(settings.key_prefix)
        self.where = f'Chroma server at {settings.chroma_host}:{settings.chroma_port}'
        self._client = client
        self._executor = executor
        self._collections: dict[Which, Collection] = {}

    async def call(self, which: Which | None, method: str, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._invoke, which, method, kwargs))

    def _invoke(self, which: Which | None, method: str, kwargs: dict[str, Any]) -> Any:
        if which is None:
            return getattr(self._client, method)(**kwargs)
        collection = self._collections.get(which)
        if collection is None:
            collection = self._collections[which] = _open_collection(self._client, self.names[which], which)
        try:
            return getattr(collection, method)(**kwargs)
        except NotFoundError:
            self._collections.pop(which, None)  # e.g. a server that lost its data: create them again
            raise

    def close(self) -> None:
        client = self._client
        if isinstance(client, Client):
            client.close()
        for owner in (client, getattr(client, '_admin_client', None)):  # chromadb leaves its connections open
            session = getattr(getattr(owner, '_server', None), '_session', None)
            if isinstance(session, httpx.Client):
                session.close()


class EmbeddedBackend(Backend):
    """Embedded Chroma in a child process of its own. Chroma's Rust bindings hold the GIL for the whole of a write
    (measured here: 10-20 ms for one record, ~100 ms for a batch of 100), which would stall the event loop whatever
    thread made the call; in a child process they cannot. One child per persistent directory and process, shared
    by the stores that use it; an ephemeral store has a child (and so a database) of its own. A child that dies is
    replaced at the next call (an ephemeral store's data dies with it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.key_prefix)
        directory = settings.chroma_persist_directory
        self.where = 'embedded Chroma' + (f' in {directory}' if directory is not None else '')
        self._path = None if directory is None else str(directory.resolve())
        self._pool = self._open()

    def _open(self) -> ProcessPoolExecutor:
        """The child for this store (blocking: it starts the process and waits until its client is open)."""
        if self._path is None:
            return _new_child(None)
        pool, users = _shared_children.get(self._path) or (_new_child(self._path), 0)
        _shared_children[self._path] = (pool, users + 1)
        return pool

    async def call(self, which: Which | None, method: str, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        name = '' if which is None else self.names[which]
        try:
            return await loop.run_in_executor(self._pool, _child_call, name, which, method, kwargs)
        except BrokenProcessPool:
            self._release()
            self._pool = self._open()
            raise

    def _release(self) -> None:
        if self._path is None:
            self._pool.shutdown(wait=True)
            return
        pool, users = _shared_children.get(self._path, (self._pool, 1))
        if pool is not self._pool:
            return
        if users > 1:
            _shared_children[self._path] = (pool, users - 1)
        else:
            del _shared_children[self._path]
            pool.shutdown(wait=True)

    def close(self) -> None:
        self._release()


_shared_children: dict[str, tuple[ProcessPoolExecutor, int]] = {}
"""Persistent directory -> (its child, the stores using it): two processes on one directory would see inconsistent
vector indexes, so a process never starts two."""


def _new_child(path: str | None) -> ProcessPoolExecutor:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('forkserver' if 'forkserver' in methods else 'spawn')
    if 'forkserver' in methods:
        context.set_forkserver_preload(['chromadb', 'memsvc.stores.chroma'])  # each child forks ready
    pool = ProcessPoolExecutor(1, mp_context=context, initializer=_child_open, initargs=(path,))
    try:  # start it here, on the caller's thread, rather than at the first call from the event loop
        pool.submit(_child_call, '', None, 'heartbeat', {}).result()
    except (BrokenProcessPool, ChildError) as exc:
        pool.shutdown(wait=False)
        where = 'an ephemeral database' if path is None else f'CHROMA_PERSIST_DIRECTORY {path}'
        raise BackendUnavailable(f'embedded Chroma could not open {where}: {exc}') from None
    return pool


def connect(settings: Settings, executor: ThreadPoolExecutor) -> Backend:
    """The backend for `settings` (blocking: call it on the executor). Raises `BackendUnavailable` naming the server
    when it does not answer."""
    if settings.chroma_host is None:
        if settings.chroma_persist_directory is not None:
            try:
                settings.chroma_persist_directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailable(
                    f'CHROMA_PERSIST_DIRECTORY {settings.chroma_persist_directory} cannot be used: {exc}'
                ) from None
        return EmbeddedBackend(settings)
    address = f'{settings.chroma_host}:{settings.chroma_port}'
    try:
        client = chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=_chroma_settings())
    except Exception as exc:  # the client raises bare Exception and ValueError for some server answers
        detail = ' '.join(str(exc).split()) or type(exc).__name__
        raise BackendUnavailable(f'Chroma server at {address} does not answer: {detail}') from None
    session = getattr(getattr(client, '_server', None), '_session', None)
    if isinstance(session, httpx.Client):  # chromadb sets no timeout: a hung server would hang us
        session.timeout = httpx.Timeout(settings.chroma_timeout)
    return ServerBackend(client, executor, settings)


class ChromaStore:
    """The `Store` contract on Chroma. The backend, the embedder and the executor are the caller's (`open_store`)."""

    self_timed: frozenset[str] = frozenset()

    def __init__(
        self, backend: Backend, embedder: 'Embedder', executor: ThreadPoolExecutor, settings: Settings
    ) -> None:
        self._backend = backend
        self._embedder = embedder
        self._executor = executor
        self._where = backend.where
        self._limits = Limits.from_settings(settings)
        self._max_messages = self._limits.max_messages
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._writing: set[asyncio.Future[Any]] = set()  # writes that run on after their caller was cancelled

    # --- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call (the embedding) on the store's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _call(self, which: Which | None, method: str, /, **kwargs: Any) -> Any:
        """A Chroma call through the backend, its failures translated into `BackendUnavailable`."""
        try:
            return await self._backend.call(which, method, **kwargs)
        except ChildError as exc:
            if exc.bug:
                raise RuntimeError(f'Chroma refused a call of this store: {exc.kind}: {exc.message}') from None
            raise BackendUnavailable(f'{self._where} failed ({exc.kind}: {exc.message}); retry shortly') from exc
        except BrokenProcessPool as exc:
            raise BackendUnavailable(f'{self._where} stopped; it restarts with the next request') from exc
        except NotFoundError as exc:
            raise BackendUnavailable(f'{self._where} lost a collection ({exc}); retry') from exc
        except (ChromaError, httpx.HTTPError, OSError) as exc:
            raise BackendUnavailable(f'{self._where} did not answer ({type(exc).__name__}); retry shortly') from exc
        except Exception as exc:
            if type(exc) is Exception:  # how chromadb's HTTP client reports unknown server errors
                raise BackendUnavailable(f'{self._where} failed: {" ".join(str(exc).split())[:200]}') from exc
            raise

    async def open(self) -> None:
        """Create (or find) the collections; raises `BackendUnavailable` naming the server when it does not answer."""
        try:
            await self._call('sessions', 'count')
            await self._call('messages', 'count')
        except BackendUnavailable as exc:
            cause = exc.__cause__
            detail = ' '.join(str(cause).split()) or type(cause).__name__
            raise BackendUnavailable(f'{self._where} does not answer: {detail}') from None

    async def _serialized(self, tenant: str, session_id: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` holding the session's lock (one writer per session in this process), to completion even if the
        caller is cancelled (a client that disconnects, a timeout): the next write of the session never starts while
        a thread of this one is still writing to Chroma."""
        key = (tenant, session_id)
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)

        async def locked() -> T:
            try:
                async with lock:
                    return await work()
            finally:
                held, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (held, users - 1)

        return await self._shielded(locked())

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await `work` as a task that a cancellation of the caller does not stop."""
        task = asyncio.ensure_future(work)
        self._writing.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._writing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled meanwhile has answered already

    @staticmethod
    def _session_id(tenant: str, session_id: str) -> str:
        return f'{tenant}/{session_id}'

    @staticmethod
    def _message_id(tenant: str, session_id: str, seq: int) -> str:
        return f'{tenant}/{session_id}/{seq}'

    async def _read(self, tenant: str, session_id: str) -> _Session | None:
        found = await self._call('sessions', 'get', ids=[self._session_id(tenant, session_id)], include=['metadatas'])
        metadatas = found['metadatas'] or []
        return _Session.from_metadata(metadatas[0]) if metadatas else None

    async def _write(self, tenant: str, session: _Session) -> None:
        record_id = self._session_id(tenant, session.record.id)
        await self._call(
            'sessions',
            'upsert',
            ids=[record_id],
            embeddings=_placeholder(record_id),
            metadatas=[session.metadata(tenant)],
        )

    async def _delete_messages(self, tenant: str, session_id: str, below: int | None = None) -> None:
        clauses: list[dict[str, Any]] = [{'tenant': tenant}, {'session_id': session_id}]
        if below is not None:
            clauses.append({'seq': {'$lt': below}})
        await self._call('messages', 'delete', where=_where(*clauses))

    async def _messages_of(self, tenant: str, session: _Session, lo: int, hi: int) -> list[bytes]:
        """The messages with ids lo .. hi - 1 (clipped to the session's range), oldest first."""
        lo, hi = max(lo, session.first_id), min(hi, session.next_id)
        if lo >= hi:
            return []
        ids = [self._message_id(tenant, session.record.id, seq) for seq in range(lo, hi)]
        rows: list[tuple[int, bytes]] = []
        for chunk in _chunks(ids):
            found = await self._call('messages', 'get', ids=list(chunk), include=['metadatas', 'documents'])
            for meta, document in zip(found['metadatas'] or [], found['documents'] or [], strict=True):
                seq = _int(meta['seq'])
                rows.append((seq, _join_message(seq, meta, document)))
        rows.sort(key=lambda row: row[0])
        return [message for _, message in rows]

    async def _stored(self, tenant: str, session: _Session, with_messages: bool) -> StoredSession:
        if not with_messages:
            return StoredSession(session.record, b'[]')
        messages = await self._messages_of(tenant, session, session.first_id, session.next_id)
        return StoredSession(session.record, json_array(messages))

    async def _check_room(self, tenant: str) -> None:
        """Before a write that creates a session: the tenant's session limit (counted, so only when one is set)."""
        if not self._limits.max_sessions:
            return
        found = await self._call('sessions', 'get', where={'tenant': tenant}, include=[])
        if len(found['ids']) >= self._limits.max_sessions:
            raise SessionLimitReached(self._limits.max_sessions)

    async def _recorded(self, tenant: str, session_id: str, idempotency: Idempotency | None) -> dict[str, Any] | None:
        """The unexpired record of this Idempotency-Key; `IdempotencyKeyReused` if it was for another request."""
        if idempotency is None:
            return None
        record_id = f'idempotency:{tenant}/{session_id}/{idempotency.key}'
        found = await self._call('sessions', 'get', ids=[record_id], include=['metadatas'])
        metadatas = found['metadatas'] or []
        if not metadatas or _int(metadatas[0]['expires']) < to_micros(utc_now()):
            return None
        if metadatas[0]['fingerprint'] != idempotency.fingerprint:
            raise IdempotencyKeyReused()
        return dict(metadatas[0])

    async def _record(self, tenant: str, session_id: str, idempotency: Idempotency | None, **result: Any) -> None:
        if idempotency is None:
            return
        record_id = f'idempotency:{tenant}/{session_id}/{idempotency.key}'
        meta = {
            'idem_tenant': tenant,
            'idem_session': session_id,
            'fingerprint': idempotency.fingerprint,
            'expires': to_micros(utc_now()) + idempotency.ttl_seconds * 1_000_000,
            **result,
        }
        await self._call('sessions', 'upsert', ids=[record_id], embeddings=_placeholder(record_id), metadatas=[meta])

    async def _committed(self, tenant: str, session: _Session, first: int, count: int, attempt: str) -> bool:
        """Whether the attempt that recorded messages first .. first + count - 1 reached its commit."""
        if session.next_id < first + count:
            return False
        probe = self._message_id(tenant, session.record.id, first)
        found = await self._call('messages', 'get', ids=[probe], include=['metadatas'])
        metadatas = found['metadatas'] or []
        return bool(metadatas) and metadatas[0].get('attempt') == attempt

    # --- the Store contract ------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call(None, 'heartbeat')

    async def create_session(
        self, tenant: str, record: SessionRecord, *, idempotency: Idempotency | None = None
    ) -> SessionRecord | None:
        work = functools.partial(self._create_session, tenant, record, idempotency)
        return await self._serialized(tenant, record.id, work)

    async def _create_session(
        self, tenant: str, record: SessionRecord, idempotency: Idempotency | None
    ) -> SessionRecord | None:
        existing = await self._read(tenant, record.id)
        recorded = await self._recorded(tenant, record.id, idempotency)
        committed = existing is not None and to_micros(existing.record.created_at) == (recorded or {}).get('created_at')
        if recorded is not None and committed:  # the create this key recorded happened: answer as it did
            created_at = from_micros(_int(recorded['created_at']))
            return SessionRecord(record.id, created_at, created_at, str(recorded['metadata']).encode(), 0)
        if existing is not None:
            return None
        await self._check_room(tenant)
        await self._delete_messages(tenant, record.id)  # whatever an interrupted delete left behind
        await self._record(
            tenant, record.id, idempotency, created_at=to_micros(record.created_at), metadata=record.metadata.decode()
        )
        await self._write(tenant, _Session(record, 1, 1))
        return record

    async def get_session(self, tenant: str, session_id: str, *, with_messages: bool) -> StoredSession | None:
        session = await self._read(tenant, session_id)
        return None if session is None else await self._stored(tenant, session, with_messages)

    async def list_sessions(
        self, tenant: str, *, limit: int, after: ListCursor | None, with_messages: bool
    ) -> tuple[list[StoredSession], bool]:
        """Reads the metadata of the tenant's sessions up to the cursor and sorts them here: Chroma cannot sort."""
        clauses: list[dict[str, Any]] = [{'tenant': tenant}]
        if after is not None:
            clauses.append({'updated_at': {'$lte': after[0]}})
        found = await self._call('sessions', 'get', where=_where(*clauses), include=['metadatas'])
        sessions = [_Session.from_metadata(meta) for meta in found['metadatas'] or []]
        positions = [(to_micros(s.record.updated_at), s.record.id) for s in sessions]
        if after is not None:
            keep = [p < after for p in positions]  # tuple order: earlier time, or same time and smaller id
            sessions = [s for s, k in zip(sessions, keep, strict=True) if k]
        sessions.sort(key=lambda s: (to_micros(s.record.updated_at), s.record.id), reverse=True)
        page = [await self._stored(tenant, s, with_messages) for s in sessions[:limit]]
        return page, len(sessions) > limit

    async def update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> SessionRecord | None:
        work = functools.partial(self._update_metadata, tenant, session_id, apply, now, expected_version)
        return await self._serialized(tenant, session_id, work)

    async def _update_metadata(
        self,
        tenant: str,
        session_id: str,
        apply: Callable[[bytes], bytes],
        now: datetime,
        expected_version: int | None,
    ) -> SessionRecord | None:
        session = await self._read(tenant, session_id)
        if session is None:
            return None
        check_version(session_id, session.record.version, expected_version)
        old = session.record
        record = SessionRecord(
            id=old.id,
            created_at=old.created_at,
            updated_at=max(old.updated_at, now),
            metadata=apply(old.metadata),
            version=old.version + 1,
        )
        await self._write(tenant, _Session(record, session.first_id, session.next_id))
        return record

    async def delete_session(self, tenant: str, session_id: str, *, expected_version: int | None = None) -> bool:
        work = functools.partial(self._delete_session, tenant, session_id, expected_version)
        return await self._serialized(tenant, session_id, work)

    async def _delete_session(self, tenant: str, session_id: str, expected_version: int | None) -> bool:
        session = await self._read(tenant, session_id)
        if session is not None:
            check_version(session_id, session.record.version, expected_version)
            await self._call('sessions', 'delete', ids=[self._session_id(tenant, session_id)])
        await self._delete_messages(tenant, session_id)  # also completes an earlier, interrupted delete
        await self._call('sessions', 'delete', where=_where({'idem_tenant': tenant}, {'idem_session': session_id}))
        return session is not None

    async def append_messages(
        self,
        tenant: str,
        session_id: str,
        bodies: list[bytes],
        now: datetime,
        *,
        expected_version: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> Appended:
        """Embeds first (the slow part, outside the session's lock), then writes the messages and the session. Once
        started it runs to its end even if the request is cancelled (a deadline, a client gone): the embedding is
        not wasted, and a retry with the same Idempotency-Key finds the result."""

        async def embed_then_write() -> Appended:
            contents = [orjson.loads(body)['content'] for body in bodies]
            vectors = await self._run(self._embedder.embed, contents)
            work = functools.partial(
                self._append_messages, tenant, session_id, bodies, vectors, now, expected_version, idempotency
            )
            return await self._serialized(tenant, session_id, work)

        return await self._shielded(embed_then_write())

    async def _append_messages(
        self,
        tenant: str,
        session_id: str,
        bodies: list[bytes],
        vectors: 'Vectors',
        now: datetime,
        expected_version: int | None,
        idempotency: Idempotency | None,
    ) -> Appended:
        session = await self._read(tenant, session_id)
        recorded = await self._recorded(tenant, session_id, idempotency)
        if recorded is not None and session is not None:
            first, count = _int(recorded['first_id']), _int(recorded['count'])
            if await self._committed(tenant, session, first, count, str(recorded['attempt'])):
                replayed = await self._messages_of(tenant, session, first, first + count)
                return Appended(replayed, _int(recorded['version']))
        check_version(session_id, None if session is None else session.record.version, expected_version)
        attempt = uuid.uuid4().hex
        if session is None:
            await self._check_room(tenant)
            await self._delete_messages(tenant, session_id)  # whatever an interrupted delete left behind
            record = SessionRecord(id=session_id, created_at=now, updated_at=now, metadata=b'{}', version=0)
            session = _Session(record, 1, 1)
        limits = self._limits
        if limits.reject_full and session.next_id - session.first_id + len(bodies) > limits.max_messages > 0:
            raise SessionFull(session_id, limits.max_messages)
        first_new = session.next_id
        stored = [with_id(first_new + n, body) for n, body in enumerate(bodies)]
        ids, metadatas, documents = [], [], []
        for n, message in enumerate(stored):
            seq = first_new + n
            role, content, rest, timestamp = _split_message(message)
            ids.append(self._message_id(tenant, session_id, seq))
            documents.append(content)
            metadatas.append(
                {
                    'tenant': tenant,
                    'session_id': session_id,
                    'role': role,
                    'seq': seq,
                    'timestamp': timestamp,
                    'rest': rest,
                    'attempt': attempt,
                }
            )
        for start in range(0, len(ids), IDS_PER_CALL):
            end = start + IDS_PER_CALL
            await self._call(
                'messages',
                'upsert',
                ids=ids[start:end],
                embeddings=vectors[start:end],
                documents=documents[start:end],
                metadatas=cast(Any, metadatas[start:end]),
            )
        next_id = first_new + len(stored)
        first_id = session.first_id
        if self._max_messages and next_id - first_id > self._max_messages:
            first_id = next_id - self._max_messages
        old = session.record
        record = SessionRecord(
            id=session_id,
            created_at=old.created_at,
            updated_at=max(old.updated_at, now),
            metadata=old.metadata,
            version=old.version + 1,
        )
        await self._record(
            tenant,
            session_id,
            idempotency,
            first_id=first_new,
            count=len(stored),
            version=record.version,
            attempt=attempt,
        )
        await self._write(tenant, _Session(record, first_id, next_id))
        if first_id > session.first_id:
            await self._delete_messages(tenant, session_id, below=first_id)
        return Appended(stored, record.version)

    async def get_messages(self, tenant: str, session_id: str, selection: MessageRange) -> bytes | None:
        session = await self._read(tenant, session_id)
        if session is None:
            return None
        lo = session.first_id if selection.after is None else max(selection.after + 1, session.first_id)
        hi = session.next_id if selection.before is None else min(selection.before, session.next_id)
        if selection.limit is not None and hi - lo > selection.limit:
            if selection.after is None:
                lo = hi - selection.limit
            else:
                hi = lo + selection.limit
        return json_array(await self._messages_of(tenant, session, lo, hi))

    async def clear_messages(
        self, tenant: str, session_id: str, now: datetime, *, expected_version: int | None = None
    ) -> int | None:
        work = functools.partial(self._clear_messages, tenant, session_id, now, expected_version)
        return await self._serialized(tenant, session_id, work)

    async def _clear_messages(
        self, tenant: str, session_id: str, now: datetime, expected_version: int | None
    ) -> int | None:
        session = await self._read(tenant, session_id)
        if session is None:
            return None
        check_version(session_id, session.record.version, expected_version)
        old = session.record
        record = SessionRecord(
            id=session_id,
            created_at=old.created_at,
            updated_at=max(old.updated_at, now),
            metadata=old.metadata,
            version=old.version + 1,
        )
        await self._write(tenant, _Session(record, session.next_id, session.next_id))
        await self._delete_messages(tenant, session_id, below=session.next_id)
        return record.version

    async def search(
        self, tenant: str, query: str, *, limit: int, session_id: str | None, role: str | None
    ) -> list[SearchHit]:
        """Best first; `score` is the cosine similarity (1 - cosine distance; 1 = the same direction). An unknown
        `session_id` raises `SessionNotFound`, so that searching a session that does not exist is a 404 like every
        other session route.

        Chroma's metadata filters are slow on a large collection (measured at 100,000 messages: 3.5 ms for a plain
        query, 560 ms with a tenant filter, 290 ms with a session filter), so neither path uses one when it can
        help it: a session of up to `EXACT_SEARCH_MAX` messages is scored exactly from its own vectors, fetched by
        id; a search of all sessions asks the index for more neighbours than needed and keeps the tenant's, and
        only falls back to a filtered query when that finds too few (a small tenant among large ones)."""
        session = None
        if session_id is not None:
            session = await self._read(tenant, session_id)
            if session is None:
                raise SessionNotFound(session_id)
        [vector] = await self._run(self._embedder.embed, [query])
        if session is not None and session.next_id - session.first_id <= EXACT_SEARCH_MAX:
            return await self._search_session(tenant, session, vector, limit, role)
        want = limit + SEARCH_MARGIN
        while session is None and want <= UNFILTERED_MAX:
            hits, exhausted = await self._query(tenant, vector, want, None, role, limit)
            if len(hits) >= limit or exhausted:
                return hits
            want *= 4
        clauses: list[dict[str, Any]] = [{'tenant': tenant}]
        if session_id is not None:
            clauses.append({'session_id': session_id})
        if role is not None:
            clauses.append({'role': role})
        hits, _ = await self._query(tenant, vector, limit + SEARCH_MARGIN, _where(*clauses), role, limit)
        return hits

    async def _search_session(
        self, tenant: str, session: _Session, vector: 'Vectors', limit: int, role: str | None
    ) -> list[SearchHit]:
        """Exact: every message of the session scored against `vector` (all vectors are unit length)."""
        sid = session.record.id
        ids = [self._message_id(tenant, sid, seq) for seq in range(session.first_id, session.next_id)]
        scored: list[tuple[float, int, Any, str | None]] = []
        for chunk in _chunks(ids):
            found = await self._call(
                'messages', 'get', ids=list(chunk), include=['embeddings', 'metadatas', 'documents']
            )
            embeddings = found['embeddings']
            if embeddings is None or len(embeddings) == 0:
                continue
            scores = np.asarray(embeddings, dtype=np.float32) @ vector
            for score, meta, document in zip(scores, found['metadatas'] or [], found['documents'] or [], strict=True):
                if role is None or meta['role'] == role:
                    scored.append((float(score), _int(meta['seq']), meta, document))
        best = heapq.nlargest(limit, scored, key=lambda row: (row[0], row[1]))
        return [SearchHit(sid, _join_message(seq, meta, document), score) for score, seq, meta, document in best]

    async def _query(
        self, tenant: str, vector: 'Vectors', want: int, where: dict[str, Any] | None, role: str | None, limit: int
    ) -> tuple[list[SearchHit], bool]:
        """The index's `want` nearest neighbours (within `where`), keeping only this tenant's live messages of
        `role`; and whether the index had no more to give."""
        found = await self._call(
            'messages',
            'query',
            query_embeddings=vector[None, :],
            n_results=want,
            where=where,
            include=['metadatas', 'documents', 'distances'],
        )
        metas = (found['metadatas'] or [[]])[0]
        documents = (found['documents'] or [[]])[0]
        distances = (found['distances'] or [[]])[0]
        exhausted = len(metas) < want
        mine = [
            (meta, document, distance)
            for meta, document, distance in zip(metas, documents, distances, strict=True)
            if meta['tenant'] == tenant and (role is None or meta['role'] == role)
        ]
        if not mine:
            return [], exhausted
        # Only hits inside a live session's range: never a ghost of an interrupted delete or clear.
        live_ids = sorted({str(meta['session_id']) for meta, _, _ in mine})
        records = await self._call(
            'sessions', 'get', ids=[self._session_id(tenant, sid) for sid in live_ids], include=['metadatas']
        )
        ranges = {
            session.record.id: (session.first_id, session.next_id)
            for session in map(_Session.from_metadata, records['metadatas'] or [])
        }
        hits = []
        for meta, document, distance in mine:
            sid, seq = str(meta['session_id']), _int(meta['seq'])
            first, end = ranges.get(sid, (0, 0))
            if first <= seq < end:
                hits.append(SearchHit(sid, _join_message(seq, meta, document), 1.0 - float(distance)))
        return hits[:limit], exhausted


async def open_chroma(settings: Settings, executor: ThreadPoolExecutor) -> tuple[Backend, 'Embedder']:
    """The backend and the embedding model, both made on `executor` (loading the model takes about a second)."""
    from memsvc.embeddings import Embedder, EmbeddingModelError

    loop = asyncio.get_running_loop()
    try:
        embedder = await loop.run_in_executor(executor, Embedder.load, settings.embedding_model_dir)
    except EmbeddingModelError as exc:
        raise NotSupported(f'MEMORY_TYPE=chroma needs an embedding model: {exc}') from None
    connecting = loop.run_in_executor(executor, connect, settings, executor)
    try:
        async with asyncio.timeout(settings.chroma_timeout):
            backend = await connecting
    except TimeoutError:
        raise BackendUnavailable(
            f'Chroma server at {settings.chroma_host}:{settings.chroma_port} did not answer within '
            f'{settings.chroma_timeout} s'
        ) from None
    return backend, embedder
