"""The Chroma calls this store makes, one typed method each, run where Chroma is: on a thread of the store's pool for
a Chroma server, in the child process for embedded Chroma (`child.py`). `transport.Transport.run` sends them there.

A new Chroma call is one more method of `Chroma`; its arguments and result must pickle (they cross to the child).
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from memsvc.stores.chroma.codec import CollectionSpec, Meta, Where

T = TypeVar('T')
Vectors = npt.NDArray[np.float32]
Column = Literal['metadatas', 'documents', 'embeddings']

IDS_PER_CALL = 1000
"""Most ids (or records) in one Chroma call: well below Chroma's batch limit and its 5,461-element bounds."""


def chunks(items: Sequence[T], size: int = IDS_PER_CALL) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def chroma_settings() -> ChromaSettings:
    """No telemetry (nothing leaves the machine), no reset."""
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


# The results that come back from the child are NamedTuples; a `Call` crosses to it as a plain tuple (`child.py`).


class Records(NamedTuple):
    """The records a `get` found, column by column; a column that was not asked for is empty (None: `embeddings`)."""

    ids: list[str]
    metadatas: list[Meta]
    documents: list[str | None]
    embeddings: Vectors | None


class Neighbours(NamedTuple):
    """The nearest records a `query` found, nearest first."""

    metadatas: list[Meta]
    documents: list[str | None]
    distances: list[float]


class Chroma:
    """One Chroma client and the collections it has opened. For a Chroma server one instance serves every thread of
    the store's pool at once (`transport.ServerTransport`): chromadb's HTTP client sends through one httpx.Client,
    which is thread-safe, and two threads that miss the same collection in `_collections` both open it, which
    `get_or_create_collection` makes harmless. Embedded Chroma's instance is used by the child process alone."""

    def __init__(self, client: ClientAPI) -> None:
        self.client = client
        self._collections: dict[str, Collection] = {}

    def apply(self, call: 'Call[T]') -> T:
        try:
            return call.op(self, *call.args, **call.kwargs)
        except NotFoundError:
            self._collections.clear()  # e.g. a server that lost its data: the next call creates them again
            raise

    def _collection(self, spec: CollectionSpec) -> Collection:
        collection = self._collections.get(spec.name)
        if collection is None:
            configuration: Any = {'hnsw': {'space': 'cosine'}} if spec.cosine else None
            collection = self.client.get_or_create_collection(
                spec.name, embedding_function=None, configuration=configuration
            )
            self._collections[spec.name] = collection
        return collection

    # --- the calls -----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        self.client.heartbeat()

    def count(self, spec: CollectionSpec) -> int:
        return self._collection(spec).count()

    def get(
        self,
        spec: CollectionSpec,
        *,
        ids: Sequence[str] | None = None,
        where: Where | None = None,
        include: Sequence[Column] = ('metadatas',),
    ) -> Records:
        found = self._collection(spec).get(
            ids=None if ids is None else list(ids), where=cast(Any, where), include=list(include)
        )
        embeddings = found['embeddings']
        return Records(
            ids=list(found['ids']),
            metadatas=list(found['metadatas'] or []),
            documents=list(found['documents'] or []),
            embeddings=None if embeddings is None else np.asarray(embeddings, np.float32),
        )

    def upsert(
        self,
        spec: CollectionSpec,
        *,
        ids: Sequence[str],
        embeddings: Vectors,
        metadatas: Sequence[Meta],
        documents: Sequence[str] | None = None,
    ) -> None:
        self._collection(spec).upsert(
            ids=list(ids),
            embeddings=embeddings,
            metadatas=cast(Any, list(metadatas)),
            documents=None if documents is None else list(documents),
        )

    def update(self, spec: CollectionSpec, *, ids: Sequence[str], metadatas: Sequence[Meta]) -> None:
        """Set these metadata fields of the records (Chroma merges them into what each holds; None removes one)."""
        self._collection(spec).update(ids=list(ids), metadatas=cast(Any, list(metadatas)))

    def delete(self, spec: CollectionSpec, *, ids: Sequence[str] | None = None, where: Where | None = None) -> None:
        self._collection(spec).delete(ids=None if ids is None else list(ids), where=cast(Any, where))

    def query(self, spec: CollectionSpec, *, vector: Vectors, n_results: int, where: Where | None) -> Neighbours:
        found = self._collection(spec).query(
            query_embeddings=vector[None, :],
            n_results=n_results,
            where=cast(Any, where),
            include=['metadatas', 'documents', 'distances'],
        )
        return Neighbours(
            metadatas=list((found['metadatas'] or [[]])[0]),
            documents=list((found['documents'] or [[]])[0]),
            distances=[float(d) for d in (found['distances'] or [[]])[0]],
        )


class Call(NamedTuple, Generic[T]):
    """One call of a `Chroma` method, made where Chroma is: it pickles (the method by its qualified name)."""

    op: Callable[..., T]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
