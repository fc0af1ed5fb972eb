"""Domain errors. Nothing here knows about HTTP; `endpoint.py` maps each class to a status."""


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


class InvalidSessionId(MemsvcError):
    """An id outside `[A-Za-z0-9_.:-]{1,128}`. Ids become storage keys: no store ever sees such an id."""

    code = 'invalid_session_id'

    def __init__(self) -> None:
        super().__init__('a session id is 1-128 characters of A-Z a-z 0-9 _ - . :')


class InvalidCursor(MemsvcError):
    code = 'invalid_parameter'

    def __init__(self) -> None:
        super().__init__('cursor: not a cursor this service handed out')


class SessionExists(MemsvcError):
    code = 'session_exists'

    def __init__(self, session_id: str) -> None:
        super().__init__(f'session {session_id!r} already exists')


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


class NotSupported(MemsvcError):
    code = 'not_supported'


class BackendUnavailable(MemsvcError):
    """The store cannot be reached or did not answer in time. Never reported as "not found"."""

    code = 'backend_unavailable'


class StoreTimeout(BackendUnavailable):
    """A store operation passed the store deadline (`MEMSVC_STORE_TIMEOUT_SECONDS`); it may still complete."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f'the store did not answer within {seconds} s')
