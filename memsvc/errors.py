"""Every error a client may see, as one family: the domain errors the manager and the stores raise, and
the request errors the HTTP layer raises before a request reaches the manager (a bad parameter, header
or body, an unknown route). Nothing here knows a status code: `endpoint.py` maps each class to one, in
one table, so that another envelope (part 2's `/v1` API) can answer the same errors in its own shape.
"""


class MemsvcError(Exception):
    """Base of every error a client may see. `code` is the stable, machine-readable part."""

    code = 'error'

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(MemsvcError):
    code = 'session_not_found'

    def __init__(self, session_id: str) -> None:
        super().__init__(f'session {session_id!r} does not exist')


class SummaryNotFound(MemsvcError):
    """The session exists and has no summary."""

    code = 'summary_not_found'

    def __init__(self, session_id: str) -> None:
        super().__init__(f'session {session_id!r} has no summary')


class MessageNotFound(MemsvcError):
    """The session exists and stores no message with this id (never given, deleted, truncated, trimmed or cleared)."""

    code = 'message_not_found'

    def __init__(self, session_id: str, message_id: int) -> None:
        super().__init__(f'session {session_id!r} stores no message with id {message_id}')
        self.message_id = message_id


class ThroughIdNotStored(MemsvcError):
    """A summary's `through_id` that names no message stored in the session (never stored, trimmed or cleared)."""

    code = 'through_id_not_stored'

    def __init__(self, session_id: str, through_id: int) -> None:
        super().__init__(f'through_id: session {session_id!r} stores no message with id {through_id}')
        self.through_id = through_id


class InvalidSessionId(MemsvcError):
    """An id outside `[A-Za-z0-9_.:-]{1,128}`. Ids become storage keys: no store ever sees such an id."""

    code = 'invalid_session_id'

    def __init__(self) -> None:
        super().__init__('a session id is 1-128 characters of A-Z a-z 0-9 _ - . :, other than . and ..')


class InvalidParameter(MemsvcError):
    """A query parameter outside its declared bounds, or given twice; `name` is the parameter."""

    code = 'invalid_parameter'

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f'{name}: {problem}')
        self.name = name


class ResponseTooLarge(MemsvcError):
    """An answer that would be larger than `MEMSVC_MAX_RESPONSE_BYTES`; `advice` says how to ask for less."""

    code = 'response_too_large'

    def __init__(self, limit: int, advice: str) -> None:
        super().__init__(f'the answer would be larger than {limit} bytes (MEMSVC_MAX_RESPONSE_BYTES); {advice}')


class InvalidCursor(InvalidParameter):
    def __init__(self) -> None:
        super().__init__('cursor', 'not a cursor this service handed out')


class SessionExists(MemsvcError):
    code = 'session_exists'

    def __init__(self, session_id: str) -> None:
        super().__init__(f'session {session_id!r} already exists')


class ForkSourceChanged(MemsvcError):
    """A fork's source lost messages it was copying (cleared, deleted or trimmed meanwhile): nothing was made."""

    code = 'fork_source_changed'

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f'session {session_id!r} was cleared, deleted or trimmed while it was being forked; nothing was made, retry'
        )


class PreconditionFailed(MemsvcError):
    """An `If-Match` that names another version than the session's current one."""

    code = 'precondition_failed'

    def __init__(self, session_id: str, current: int | None) -> None:
        now = 'does not exist' if current is None else f'is at version "{current}"'
        super().__init__(f'session {session_id!r} {now}; read it again and retry with its current ETag')
        self.current = current


class IdempotencyKeyReused(MemsvcError):
    code = 'idempotency_key_reused'

    def __init__(self) -> None:
        super().__init__('this Idempotency-Key was used for a different request; use a new key for a new request')


class LimitReached(MemsvcError):
    """A write that would take a tenant or a session past a configured bound; nothing was written."""


class SessionLimitReached(LimitReached):
    code = 'session_limit_reached'

    def __init__(self, limit: int) -> None:
        super().__init__(
            f'this tenant holds its limit of {limit} sessions (MEMSVC_MAX_SESSIONS_PER_TENANT); delete some first'
        )


class SessionFull(LimitReached):
    code = 'session_full'

    def __init__(self, session_id: str, limit: int) -> None:
        super().__init__(
            f'session {session_id!r} holds its limit of {limit} messages (MEMSVC_MAX_MESSAGES_PER_SESSION); '
            'clear it or start a new session'
        )


class InvalidInput(MemsvcError):
    """A well-formed request whose content breaks a rule; `field` names where (e.g. `metadata`)."""

    code = 'validation_error'

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f'{field}: {problem}' if field else problem)
        self.field = field


class InvalidHeader(MemsvcError):
    """A request header (If-Match, Idempotency-Key) that does not match its declared pattern."""

    code = 'invalid_header'

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f'{name}: {problem}')
        self.name = name


class MalformedJson(MemsvcError):
    """A body that is missing where one is needed, or is not JSON."""

    code = 'malformed_json'


class UnsupportedMediaType(MemsvcError):
    code = 'unsupported_media_type'

    def __init__(self, message: str = 'send the body as JSON with "Content-Type: application/json"') -> None:
        super().__init__(message)


class BodyTooLarge(MemsvcError):
    """A body longer than `MEMSVC_MAX_BODY_BYTES`; it was not read in full."""

    code = 'body_too_large'


class IncompleteRequest(MemsvcError):
    """The client closed the connection before its request was read in full; nobody reads this answer."""

    code = 'incomplete_request'

    def __init__(self) -> None:
        super().__init__('the connection closed before the request was complete')


class Unauthorized(MemsvcError):
    """API keys are configured and the request carries none of them."""

    code = 'unauthorized'

    def __init__(self) -> None:
        super().__init__('send the API key as "Authorization: Bearer <key>"')


class RouteNotFound(MemsvcError):
    code = 'not_found'

    def __init__(self, path: str) -> None:
        super().__init__(f'no route for {path}')


class MethodNotAllowed(MemsvcError):
    """A path that other methods serve; `allowed` lists them, sorted."""

    code = 'method_not_allowed'

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f'{method} is not allowed on {path}; allowed: {",".join(allowed)}')
        self.allowed = allowed


class InternalError(MemsvcError):
    """A bug: an exception nothing above expected. The message lets an operator find it in the logs."""

    code = 'internal_error'

    def __init__(self, request_id: str) -> None:
        super().__init__(f'the server failed to handle this request; quote request id {request_id}')


class NotSupported(MemsvcError):
    code = 'not_supported'


class BackendUnavailable(MemsvcError):
    """The store cannot be reached or did not answer in time. Never reported as "not found"."""

    code = 'backend_unavailable'


class TooManyStreams(MemsvcError):
    """This process holds `MEMSVC_MAX_STREAMS` open event streams already."""

    code = 'too_many_streams'

    def __init__(self, limit: int) -> None:
        super().__init__(
            f'this server holds its limit of {limit} open event streams (MEMSVC_MAX_STREAMS); retry shortly'
        )


class StoreTimeout(BackendUnavailable):
    """A store operation passed the store deadline (`MEMSVC_STORE_TIMEOUT_SECONDS`); it may still complete."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f'the store did not answer within {seconds} s')
