"""The Chroma store (MEMORY_TYPE=chroma): every message one Chroma record with its vector, for semantic search.

Modes: embedded and persistent (`CHROMA_PERSIST_DIRECTORY`), embedded and ephemeral (unset: gone when the process
ends), or a Chroma server (`CHROMA_HOST`/`CHROMA_PORT`, `chromadb.HttpClient`).

    codec.py       how sessions, messages and idempotency records map to Chroma records (the layout)
    operations.py  the Chroma calls the store makes, one typed method each
    transport.py   where those calls run (a thread for a server, the child for embedded), their errors translated
    child.py       the child process of embedded Chroma
    store.py       the Store contract: the commit point, versions, idempotency
    writes.py      how its writes run: one writer per session, each to its end
    search.py      semantic search
"""

from memsvc.stores.chroma.store import ChromaStore
from memsvc.stores.chroma.transport import open_chroma

__all__ = ['ChromaStore', 'open_chroma']
