"""Plain helpers shared by the tests: the API's base path, messages as stores take and give them, and which
environment memsvc reads. The fixtures live in `conftest.py`, the servers the suite starts in `servers.py`
and `chroma_server.py`."""

from typing import Any

import orjson
from pydantic import TypeAdapter

from memsvc.metrics import MULTIPROC_ENV
from memsvc.models import NewMessage, Role, encode_message, utc_now

API = '/api/v1/chat'
"""The chat API's base path as clients write it: spelled out rather than imported from memsvc, so that a change
to the public path fails the tests."""

_NEW_MESSAGE = TypeAdapter(NewMessage)


def body(content: str, role: Role = 'user', **fields: Any) -> bytes:
    """A message as the manager hands it to a store: validated, and encoded with the current time."""
    return encode_message(_NEW_MESSAGE.validate_python({'role': role, 'content': content, **fields}), utc_now())


def parsed(messages: bytes | list[bytes] | None) -> list[dict[str, Any]]:
    """Messages as a store gives them: one JSON array (`get_messages`) or a list of encoded messages."""
    assert messages is not None
    return orjson.loads(messages) if isinstance(messages, bytes) else [orjson.loads(m) for m in messages]


def contents(messages: bytes | list[bytes] | None) -> list[str]:
    return [m['content'] for m in parsed(messages)]


def ids(messages: bytes | list[bytes] | None) -> list[int]:
    return [m['id'] for m in parsed(messages)]


_PREFIXES = ('MEMSVC_', 'REDIS_', 'CHROMA_')
_NAMES = frozenset({'MEMORY_TYPE', MULTIPROC_ENV})


def is_memsvc_variable(name: str) -> bool:
    """Whether memsvc may read the environment variable `name`: `Settings` reads `MEMSVC_*` and the seed's
    `MEMORY_TYPE`, `REDIS_URL`, `CHROMA_*` (the prefixes cover names added later), `metrics.py` reads
    `PROMETHEUS_MULTIPROC_DIR`. pydantic-settings matches names in any case, so this does too."""
    upper = name.upper()
    return upper.startswith(_PREFIXES) or upper in _NAMES
