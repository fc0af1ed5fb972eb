"""How the store's Chroma calls reach Chroma, off the event loop, and how their failures come back.

`await transport.run(Chroma.get, spec, ids=...)` is typed by the `Chroma` method it names (`operations.py`). A
Chroma server is called through chromadb's HTTP client on the store's bounded thread pool (`MEMSVC_CHROMA_THREADS`;
the client releases the GIL while it waits for the network); embedded Chroma runs in a child process (`child.py`).
Server errors, timeouts (`MEMSVC_CHROMA_TIMEOUT`), connection failures and a dead child become `BackendUnavailable`
(503) here, and nowhere else; a server that lost its collections gets them created again.
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import chromadb
import httpx
from chromadb.api import ClientAPI
from chromadb.api.client import Client
from chromadb.errors import ChromaError, NotFoundError

from memsvc.errors import BackendUnavailable, NotSupported
from memsvc.settings import Settings
from memsvc.stores.chroma.child import CHILDREN, Child, ChildError, ChildStopped
from memsvc.stores.chroma.operations import Call, Chroma, chroma_settings

if TYPE_CHECKING:  # imported where used: the child process of embedded Chroma needs no embedding model
    from memsvc.embeddings import Embedder

P = ParamSpec('P')
T = TypeVar('T')


def describe(settings: Settings) -> str:
    """The Chroma that `settings` name, as error messages speak of it."""
    if settings.chroma_host is not None:
        return f'Chroma server at {settings.chroma_host}:{settings.chroma_port}'
    directory = settings.chroma_persist_directory
    return 'embedded Chroma (ephemeral)' if directory is None else f'embedded Chroma in {directory}'


class Transport(ABC):
    """Runs `Chroma` calls where Chroma is. `where` names that Chroma in error messages."""

    def __init__(self, where: str) -> None:
        self.where = where

    async def run(self, op: Callable[Concatenate[Chroma, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`op(chroma, *args, **kwargs)` where Chroma is, its failures translated into `BackendUnavailable`."""
        where = self.where
        try:
            return await self._send(Call(op, args, kwargs))
        except ChildError as exc:
            if exc.bug:
                raise RuntimeError(f'Chroma refused a call of this store: {exc.kind}: {exc.message}') from None
            raise BackendUnavailable(f'{where} failed ({exc.kind}: {exc.message}); retry shortly') from exc
        except ChildStopped as exc:
            raise BackendUnavailable(f'{where} stopped; it restarts with the next request') from exc
        except NotFoundError as exc:
            raise BackendUnavailable(f'{where} lost a collection ({exc}); retry') from exc
        except (ChromaError, httpx.HTTPError, OSError) as exc:
            raise BackendUnavailable(f'{where} did not answer ({type(exc).__name__}); retry shortly') from exc
        except Exception as exc:
            if type(exc) is Exception:  # how chromadb's HTTP client reports unknown server errors
                raise BackendUnavailable(f'{where} failed: {" ".join(str(exc).split())[:200]}') from exc
            raise

    @abstractmethod
    async def _send(self, call: Call[T]) -> T: ...

    @abstractmethod
    def close(self) -> None:
        """Release everything (blocking: run it on the executor)."""


class ServerTransport(Transport):
    """A Chroma server, through chromadb's HTTP client on the store's thread pool."""

    def __init__(self, client: ClientAPI, executor: ThreadPoolExecutor, where: str) -> None:
        super().__init__(where)
        self._chroma = Chroma(client)  # used by several threads: a collection may be opened twice, harmlessly
        self._executor = executor

    async def _send(self, call: Call[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._chroma.apply, call)

    def close(self) -> None:
        client = self._chroma.client
        if isinstance(client, Client):
            client.close()
        for owner in (client, getattr(client, '_admin_client', None)):  # chromadb leaves its connections open
            session = getattr(getattr(owner, '_server', None), '_session', None)
            if isinstance(session, httpx.Client):
                session.close()


class EmbeddedTransport(Transport):
    """Embedded Chroma, in its child process; the calls wait on the child's own thread."""

    def __init__(self, child: Child, where: str) -> None:
        super().__init__(where)
        self._child = child

    async def _send(self, call: Call[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._child.executor, self._child.call, call)

    def close(self) -> None:
        CHILDREN.release(self._child)


def connect(settings: Settings, executor: ThreadPoolExecutor) -> Transport:
    """The transport for `settings` (blocking: call it on the executor). Raises `BackendUnavailable` naming the
    Chroma when it cannot be opened."""
    where = describe(settings)
    if settings.chroma_host is None:
        directory = settings.chroma_persist_directory
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailable(f'CHROMA_PERSIST_DIRECTORY {directory} cannot be used: {exc}') from None
        return EmbeddedTransport(CHILDREN.acquire(None if directory is None else str(directory.resolve())), where)
    try:
        client = chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings())
    except Exception as exc:  # the client raises bare Exception and ValueError for some server answers
        detail = ' '.join(str(exc).split()) or type(exc).__name__
        raise BackendUnavailable(f'{where} does not answer: {detail}') from None
    session = getattr(getattr(client, '_server', None), '_session', None)
    if isinstance(session, httpx.Client):  # chromadb sets no timeout: a hung server would hang us
        session.timeout = httpx.Timeout(settings.chroma_timeout)
    return ServerTransport(client, executor, where)


def _close_when_made(connecting: 'Future[Transport]') -> None:
    """Close a transport that was made after its caller stopped waiting for it."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


async def open_chroma(settings: Settings, executor: ThreadPoolExecutor) -> tuple[Transport, 'Embedder']:
    """The transport and the embedding model, both made on `executor` (loading the model is slow)."""
    from memsvc.embeddings import Embedder, EmbeddingModelError

    loop = asyncio.get_running_loop()
    try:
        embedder = await loop.run_in_executor(executor, Embedder.load, settings.embedding_model_dir)
    except EmbeddingModelError as exc:
        raise NotSupported(f'MEMORY_TYPE=chroma needs an embedding model: {exc}') from None
    connecting = executor.submit(connect, settings, executor)
    try:
        async with asyncio.timeout(settings.chroma_timeout):
            transport = await asyncio.wrap_future(connecting)
    except TimeoutError:
        connecting.add_done_callback(_close_when_made)  # a child still starting is stopped once it has started
        verb = 'answer' if settings.chroma_host is not None else 'open'
        raise BackendUnavailable(
            f'{describe(settings)} did not {verb} within {settings.chroma_timeout} s (MEMSVC_CHROMA_TIMEOUT)'
        ) from None
    return transport, embedder
