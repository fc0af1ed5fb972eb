"""A Python client of memsvc: `AsyncMemsvcClient` (asyncio: calls on HTTP/1.1 connections of its own, the event
stream on aiohttp) and `MemsvcClient` (blocking, the same client run on a background event loop), for every route
of the chat API.

    async with AsyncMemsvcClient('http://127.0.0.1:8080', api_key=KEY) as client:
        await client.append_many('s-1', [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}])
        history = await client.get_messages('s-1', limit=20)

Safe by default: appends, creates, forks and summary writes carry an `Idempotency-Key` made once per call and
sent again on each retry, so a retried write is stored once; reads and keyed writes are retried on 503,
connection errors and timeouts (`Retries`: bounded in attempts and seconds, jittered backoff, `Retry-After`
honoured); other writes only when they surely never reached the server. `modify()` is a read-modify-write under
`If-Match` that retries on conflicts. Results are the server's own types (`memsvc.models`), errors one class per
error code (`memsvc.client.errors`), each with the request id. This package's docstrings are its reference:
`python -m pydoc memsvc.client.aio`, `… memsvc.client.transport`, `… memsvc.client.errors`.
"""

from memsvc.client.aio import AsyncMemsvcClient, Page
from memsvc.client.blocking import MemsvcClient
from memsvc.client.errors import (
    ApiError,
    BackendUnavailable,
    ContextBudgetTooSmall,
    ForkSourceChanged,
    IdempotencyKeyReused,
    InvalidInput,
    InvalidParameter,
    InvalidSessionId,
    LimitReached,
    MessageNotFound,
    NotSupported,
    PreconditionFailed,
    ResponseTooLarge,
    SessionExists,
    SessionFull,
    SessionLimitReached,
    SessionNotFound,
    SummaryNotFound,
    ThroughIdNotStored,
    TooManyStreams,
    TransportError,
    Unauthorized,
)
from memsvc.client.events import Event
from memsvc.client.transport import Retries
from memsvc.client.versions import IfMatch, Versioned, metadata_patch

__all__ = [
    'ApiError',
    'AsyncMemsvcClient',
    'BackendUnavailable',
    'ContextBudgetTooSmall',
    'Event',
    'ForkSourceChanged',
    'IdempotencyKeyReused',
    'IfMatch',
    'InvalidInput',
    'InvalidParameter',
    'InvalidSessionId',
    'LimitReached',
    'MemsvcClient',
    'MessageNotFound',
    'NotSupported',
    'Page',
    'PreconditionFailed',
    'ResponseTooLarge',
    'Retries',
    'SessionExists',
    'SessionFull',
    'SessionLimitReached',
    'SessionNotFound',
    'SummaryNotFound',
    'ThroughIdNotStored',
    'TooManyStreams',
    'TransportError',
    'Unauthorized',
    'Versioned',
    'metadata_patch',
]
