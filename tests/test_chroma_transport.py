"""What memsvc/stores/chroma/transport.py reads of chromadb's private attributes, against a real Chroma server:
the HTTP client's httpx session (where the timeout is set, and what `close` closes) and its admin client's. A
chromadb release that moves them fails here, naming the version, rather than leaving calls without a timeout."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import chromadb
import httpx
import pytest

from memsvc.settings import Settings
from memsvc.stores.chroma.transport import ServerTransport, connect
from tests.chroma_server import ChromaServer

TIMEOUT_SECONDS = 7.5
MOVED = (
    f'chromadb {chromadb.__version__} no longer keeps an httpx.Client at {{}}, which '
    'memsvc/stores/chroma/transport.py reads; adapt it and the chromadb pin in pyproject.toml'
)


@pytest.fixture
def transport(chroma_server: ChromaServer) -> Iterator[ServerTransport]:
    settings = Settings(
        memory_type='chroma', chroma_host='127.0.0.1', chroma_port=chroma_server.port, chroma_timeout=TIMEOUT_SECONDS
    )
    with ThreadPoolExecutor(1) as executor:
        made = connect(settings, executor)
        assert isinstance(made, ServerTransport)
        yield made
        made.close()  # a second close, after the test's own, changes nothing


def _session(owner: object) -> object:
    return getattr(getattr(owner, '_server', None), '_session', None)


def test_the_server_client_s_session_carries_the_configured_timeout(transport: ServerTransport) -> None:
    session = _session(transport._chroma.client)
    assert isinstance(session, httpx.Client), MOVED.format('client._server._session')
    assert session.timeout == httpx.Timeout(TIMEOUT_SECONDS), (
        f'chromadb {chromadb.__version__}: the session timeout is {session.timeout}, not MEMSVC_CHROMA_TIMEOUT'
    )
    assert transport._chroma.client.heartbeat() > 0, 'the session set up this way reaches the server'


def test_close_closes_the_sessions_of_the_client_and_its_admin_client(transport: ServerTransport) -> None:
    client = transport._chroma.client
    sessions = [_session(client), _session(getattr(client, '_admin_client', None))]
    places = ['client._server._session', 'client._admin_client._server._session']
    for session, where in zip(sessions, places, strict=True):
        assert isinstance(session, httpx.Client), MOVED.format(where)
    transport.close()
    assert [session.is_closed for session in sessions if isinstance(session, httpx.Client)] == [True, True]
