"""Embedded Chroma in a child process of its own.

Chroma's Rust bindings hold the GIL for the whole of a write, which would stall the event loop whatever thread of
this process made the call; in a child process they cannot. The child holds one client and answers `Call`s over a
pipe, one at a time, until the parent closes the pipe. The parent talks to it from one thread of the child's own
(`Child.executor`), so calls reach it in order and the store's thread pool is never held up waiting.

One child per persistent directory and process, shared by the stores that use it (`Children`): two clients on one
directory would see inconsistent vector indexes. An ephemeral store has a child (and so a database) of its own. A
child that dies is replaced at the next call (an ephemeral store's data dies with it).
"""

import multiprocessing
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import chromadb

from memsvc.errors import BackendUnavailable
from memsvc.stores.chroma.operations import Call, Chroma, chroma_settings

T = TypeVar('T')

STOP_TIMEOUT_SECONDS = 10.0


class ChildError(Exception):
    """An error raised by Chroma in the child process, carried back by name: Chroma's own exceptions do not pickle.
    `bug` says it was our call that was wrong (an invalid argument), not Chroma that failed."""

    def __init__(self, kind: str, message: str, bug: bool) -> None:
        super().__init__(kind, message, bug)
        self.kind, self.message, self.bug = kind, message, bug

    @classmethod
    def of(cls, exc: Exception) -> 'ChildError':
        from chromadb.errors import InvalidArgumentError

        bug = isinstance(exc, (InvalidArgumentError, TypeError, ValueError))
        return cls(type(exc).__name__, ' '.join(str(exc).split())[:500], bug)


class ChildStopped(Exception):
    """The child process ended (it was killed, or crashed) before it answered."""


def serve(conn: Connection, path: str | None) -> None:
    """The child's whole life: open the client (persistent at `path`, or ephemeral), say so, then answer calls until
    the parent closes the pipe. Ctrl-C is the parent's to handle: it closes the pipe when it shuts down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if path is None:
            client = chromadb.EphemeralClient(settings=chroma_settings())
        else:
            client = chromadb.PersistentClient(path=path, settings=chroma_settings())
        chroma = Chroma(client)
        chroma.heartbeat()
    except Exception as exc:
        conn.send(ChildError.of(exc))
        return
    conn.send(None)
    while True:
        try:
            op, args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            reply = chroma.apply(Call(op, args, kwargs))
        except Exception as exc:
            reply = ChildError.of(exc)
        conn.send(reply)


class Child:
    """The parent's side of one child process. `call` and `start` run on `executor` (one thread) only."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(1, thread_name_prefix='memsvc-chroma-child')
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def database(self) -> str:
        return 'an ephemeral database' if self.path is None else f'CHROMA_PERSIST_DIRECTORY {self.path}'

    def start(self) -> None:
        """Start the child unless it runs, and wait until its client is open."""
        if self._conn is not None:
            return
        context: ForkServerContext | SpawnContext
        if 'forkserver' in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context('forkserver')
            context.set_forkserver_preload(['chromadb', __name__])  # each child forks ready
        else:
            context = multiprocessing.get_context('spawn')
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve, args=(theirs, self.path), name=f'memsvc-chroma {self.database}', daemon=True
        )
        process.start()
        theirs.close()  # the child holds the only other end: its exit is an end of file here
        self._process, self._conn = process, ours
        try:
            ready = self._reply()
        except ChildStopped:
            ready = 'it stopped while opening'
        if ready is not None:
            self._discard()
            raise BackendUnavailable(f'embedded Chroma could not open {self.database}: {ready}')

    def call(self, call: Call[T]) -> T:
        """Make `call` in the child (starting it first if it is not running); raises `ChildError` or `ChildStopped`."""
        self.start()
        assert self._conn is not None
        try:
            self._conn.send(tuple(call))  # a plain tuple pickles faster than the NamedTuple
        except OSError:
            self._discard()
            raise ChildStopped() from None
        reply = self._reply()
        if isinstance(reply, ChildError):
            raise reply
        return reply  # type: ignore[no-any-return]  # what `call.op` returned, pickled

    def _reply(self) -> Any:
        assert self._conn is not None
        assert self._process is not None
        conn = self._conn
        wait([conn, self._process.sentinel])  # either the answer, or the child's end
        try:
            if conn.poll():
                return conn.recv()
        except (EOFError, OSError):
            pass
        self._discard()
        raise ChildStopped()

    def _discard(self) -> None:
        """Forget the child: close the pipe (the child ends when it reads the end of it) and wait for its exit."""
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(STOP_TIMEOUT_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()

    def close(self) -> None:
        """Stop the child and the thread that talks to it (blocking)."""
        self.executor.submit(self._discard).result()
        self.executor.shutdown(wait=True)


class Children:
    """The children of persistent directories in this process, and how many stores use each. The one process-wide
    state of the Chroma store, because its invariant is process-wide: a process never opens a directory twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[str, tuple[Child, int]] = {}

    def acquire(self, path: str | None) -> Child:
        """A running child for `path` (a new one when None: ephemeral). Blocking: it may start the child."""
        if path is None:
            child = Child(None)
        else:
            with self._lock:
                child, users = self._by_path.get(path) or (Child(path), 0)
                self._by_path[path] = (child, users + 1)
        try:
            child.executor.submit(child.start).result()
        except BaseException:
            self.release(child)
            raise
        return child

    def release(self, child: Child) -> None:
        """Stop `child` when its last store lets it go (blocking)."""
        if child.path is not None:
            with self._lock:
                _, users = self._by_path[child.path]
                if users > 1:
                    self._by_path[child.path] = (child, users - 1)
                    return
                del self._by_path[child.path]
        child.close()


CHILDREN = Children()
