"""The errors a client raises: one class per error code the server answers, each derived from the server's own
class of that name, so that the codes, the names and the hierarchy live in one place (`memsvc.errors`, and the
error classes other server modules define).

Every class here is an `ApiError`: it carries the answer's `status`, `code`, `message`, `request_id` (the
`X-Request-ID` the server logged the request under: quote it when reporting a problem) and `retry_after`. A code
this version does not know (a newer server's, or one the HTTP edge answers itself, such as
`too_many_connections`) is raised as `ApiError` with that code. `TransportError` is a request that got no
answer at all (the connection failed or timed out) after the retries the client was allowed.

    try:
        await client.get_session('s-1')
    except SessionNotFound as exc:
        print(exc.status, exc.code, exc.request_id)
"""

from typing import Any, cast

import memsvc.context
from memsvc import errors as server

SERVER_MODULES = ('memsvc.errors', 'memsvc.context')
"""The modules that define the errors of the native API (`memsvc.context` its `ContextBudgetTooSmall`)."""


class ApiError(Exception):
    """An error answer of memsvc (any status from 400 up), or a request the client refused to send because the
    server would have answered it with this error (then `status` and `request_id` are None)."""

    code: str = 'error'

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f' (request id {self.request_id})' if self.request_id else ''
        status = f'{self.status} ' if self.status is not None else ''
        return f'{status}{self.code}: {self.message}{where}'


class TransportError(ApiError):
    """No answer: the connection could not be made, broke, or timed out, on every attempt allowed."""

    code = 'transport_error'


def server_classes() -> list[type[server.MemsvcError]]:
    """Every error class of `SERVER_MODULES`, parents before children."""
    found: list[type[server.MemsvcError]] = []
    todo = [server.MemsvcError]
    while todo:
        for sub in todo.pop(0).__subclasses__():
            todo.append(sub)
            if sub.__module__ in SERVER_MODULES:
                found.append(sub)
    return found


def _twins() -> dict[type[server.MemsvcError], type[ApiError]]:
    """A client class for each server class, under its name, with its code and docstring, and a subclass of the
    twin of its server parent (`SessionFull` is a `LimitReached`)."""
    twins: dict[type[server.MemsvcError], type[ApiError]] = {server.MemsvcError: ApiError}
    for cls in server_classes():
        parent = next((twins[base] for base in cls.__mro__[1:] if base in twins), ApiError)
        namespace: dict[str, Any] = {'__module__': __name__, '__doc__': cls.__doc__, '__qualname__': cls.__name__}
        if 'code' in vars(cls):
            namespace['code'] = cls.code
        twins[cls] = cast(type[ApiError], type(cls.__name__, (parent,), namespace))
    return twins


_TWINS = _twins()
BY_CODE: dict[str, type[ApiError]] = {}
"""The class raised for each code the server answers with (the most general class, when several share one)."""
for _server_class, _twin in _TWINS.items():
    BY_CODE.setdefault(_twin.code, _twin)


def twin(server_class: type[server.MemsvcError]) -> type[ApiError]:
    """The client class of a server error class."""
    return _TWINS[server_class]


def error_for(status: int, code: str, message: str, request_id: str | None, retry_after: float | None) -> ApiError:
    return BY_CODE.get(code, ApiError)(
        message, status=status, code=code, request_id=request_id, retry_after=retry_after
    )


# The classes to catch, by the server's names. Any other code the server answers is still raised as its own
# class (`BY_CODE`); these names are for `except` clauses and the type checker.
SessionNotFound = twin(server.SessionNotFound)
SummaryNotFound = twin(server.SummaryNotFound)
MessageNotFound = twin(server.MessageNotFound)
SessionExists = twin(server.SessionExists)
ForkSourceChanged = twin(server.ForkSourceChanged)
PreconditionFailed = twin(server.PreconditionFailed)
IdempotencyKeyReused = twin(server.IdempotencyKeyReused)
LimitReached = twin(server.LimitReached)
SessionFull = twin(server.SessionFull)
SessionLimitReached = twin(server.SessionLimitReached)
InvalidInput = twin(server.InvalidInput)
InvalidParameter = twin(server.InvalidParameter)
InvalidSessionId = twin(server.InvalidSessionId)
ThroughIdNotStored = twin(server.ThroughIdNotStored)
ContextBudgetTooSmall = twin(memsvc.context.ContextBudgetTooSmall)
ResponseTooLarge = twin(server.ResponseTooLarge)
Unauthorized = twin(server.Unauthorized)
NotSupported = twin(server.NotSupported)
BackendUnavailable = twin(server.BackendUnavailable)
TooManyStreams = twin(server.TooManyStreams)
