"""HTTP handlers: parse and check the request, call the manager, write JSON. No storage code here.

Each handler is declared once, in its decorator: its parameters, headers, body and answers, which the
handler reads through and `openapi.py` documents (see `declare.py`). One module per family of routes,
all on one route table; the import order below is the order the routes are matched and documented in.
"""

from memsvc.routes import sessions, messages, stream, context, search, transfer, ops  # isort: skip (the matching order)
from memsvc.routes.common import IDEMPOTENCY_KEY, routes
from memsvc.routes.sessions import LIST_LIMIT

__all__ = [
    'IDEMPOTENCY_KEY',
    'LIST_LIMIT',
    'context',
    'messages',
    'ops',
    'routes',
    'search',
    'sessions',
    'stream',
    'transfer',
]
