"""The data model: request bodies (pydantic, validated once at the edge), the JSON shapes the API
answers with, and stored records. The OpenAPI document's schemas are generated from these types.

Messages are serialized once, when they are appended, and kept as JSON bytes from then on: the
read paths send those bytes back without building objects again. A stored message looks like

    {"id":7,"role":"user","content":"Hi","timestamp":"2026-01-01T00:00:00.123456Z"}

with `name`, `tool_call_id`, `tool_calls` and `metadata` before the timestamp only when the client sent
them: fields a client did not send are left out of responses, never returned as null.

A bound that comes from the settings (the longest content, the most metadata keys) is enforced by the
manager, with its own message; the types carry it for the document only, as `settings_bound(...)`.
"""

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NotRequired, cast, get_args

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python 3.11

from memsvc.errors import InvalidInput, InvalidSessionId

SESSION_ID_PATTERN = r'^[A-Za-z0-9_.:-]{1,128}$'
_SESSION_ID = re.compile(SESSION_ID_PATTERN)

Role = Literal['system', 'developer', 'user', 'assistant', 'tool']
ROLES: tuple[str, ...] = get_args(Role)
SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN, description='1-128 characters of A-Z a-z 0-9 _ - . :')]
INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson can write


def _storable(value: Any) -> Any:
    """Refuse numbers that JSON cannot carry back: NaN, Infinity (and floats that overflow to it), and
    integers beyond 64 bits. The parser accepts them, but they would come back as null or not at all."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError('numbers must be finite (NaN and Infinity are not JSON)')
    elif isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ValueError('integers must fit in 64 bits')
    elif isinstance(value, dict):
        for item in value.values():
            _storable(item)
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    return value


JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_storable),
    Field(description='any JSON object; numbers must be finite and integers fit in 64 bits'),
]

SETTINGS_BOUND = 'x-settings'
"""The JSON Schema extension that names, for a keyword, the `Settings` field whose value it takes
(`{"maxLength": "max_content_chars"}`); a value with braces is a template of settings fields."""


def settings_bound(**keywords: str) -> Any:
    """A `Field` that documents bounds the settings give: `openapi.py` fills them in per deployment."""
    return Field(json_schema_extra={SETTINGS_BOUND: cast(Any, keywords)})


Metadata = Annotated[
    JsonObject,
    settings_bound(
        maxProperties='max_metadata_keys',
        description='at most {max_metadata_keys} keys and {max_metadata_bytes} bytes as JSON; '
        'numbers must be finite and integers fit in 64 bits',
    ),
]
ShortText = Annotated[str, Field(max_length=256)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_DOT_SEGMENTS = ('.', '..')
"""Ids the pattern allows but a URL cannot carry: clients that normalise URLs (curl, aiohttp's) remove them."""


def is_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None and value not in _DOT_SEGMENTS


def require_session_id(value: str) -> str:
    if _SESSION_ID.fullmatch(value) is None or value in _DOT_SEGMENTS:
        raise InvalidSessionId()
    return value


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch: the sort key of the session listing."""
    delta = moment - EPOCH  # integer fields: cheaper than `delta // timedelta(microseconds=1)`
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class _Body(BaseModel):
    model_config = ConfigDict(extra='forbid', frozen=True)


@with_config(ConfigDict(extra='forbid'))
class NewMessage(TypedDict):
    # A TypedDict rather than a model: validation yields the dict that is encoded, with no object built
    # and no fields copied out of it. Null is accepted for the optional fields and means left out.

    role: Role
    content: Annotated[str, settings_bound(maxLength='max_content_chars')]
    name: NotRequired[ShortText | None]
    tool_call_id: NotRequired[ShortText | None]
    tool_calls: NotRequired[list[JsonObject] | None]
    metadata: NotRequired[Metadata | None]


NewMessages = Annotated[
    list[NewMessage], Field(json_schema_extra={'minItems': 1, SETTINGS_BOUND: {'maxItems': 'max_batch'}})
]
"""A batch, appended atomically; the manager enforces its length (1 to `MEMSVC_MAX_BATCH`)."""


class NewSession(_Body):
    id: SessionId | None = None
    metadata: Metadata = Field(default_factory=dict)


class NewFork(_Body):
    id: SessionId | None = Field(None, description='the new session id; default: a new uuid4')
    through_id: Annotated[
        int | None, Field(ge=1, le=2**53 - 1, description="the last message copied; default: the source's last")
    ] = None
    metadata: Metadata | None = Field(None, description="the new session's metadata; default: the source's")


class SessionPatch(_Body):
    metadata: JsonObject = Field(description='a JSON merge patch (RFC 7386): null deletes a key')


class NewSummary(_Body):
    content: Annotated[str, settings_bound(maxLength='max_content_chars')]
    through_id: Annotated[int, Field(ge=1, le=2**53 - 1, description='the id of the last message it covers')]


# --- what the API answers with (the stored bytes are sent as they are; these describe them) ----------


@with_config(ConfigDict(extra='forbid'))
class Message(TypedDict):
    """A stored message; optional fields appear only when the client sent them."""

    id: Annotated[int, Field(ge=1, description='ordered within the session')]
    role: Role
    content: str
    name: NotRequired[str]
    tool_call_id: NotRequired[str]
    tool_calls: NotRequired[list[JsonObject]]
    metadata: NotRequired[JsonObject]
    timestamp: datetime


@with_config(ConfigDict(extra='forbid'))
class ForkedFrom(TypedDict):
    session_id: SessionId
    message_id: Annotated[int | None, Field(description='the last message copied; null: the source had none')]


@with_config(ConfigDict(extra='forbid'))
class Session(TypedDict):
    id: SessionId
    created_at: datetime
    updated_at: datetime
    messages: list[Message]
    metadata: JsonObject
    forked_from: NotRequired[Annotated[ForkedFrom, Field(description='only on a fork: what it was copied from')]]
    message_count: NotRequired[
        Annotated[int, Field(ge=0, description='only in a listing with include_message_count=true: messages stored')]
    ]


@with_config(ConfigDict(extra='forbid', title='SearchHit'))
class SearchHitBody(TypedDict):
    session_id: str
    message: Message
    score: Annotated[float, Field(description='higher is more similar')]


@with_config(ConfigDict(extra='forbid', title='Summary'))
class SummaryBody(TypedDict):
    content: str
    through_id: int
    updated_at: datetime


@with_config(ConfigDict(extra='forbid', title='ContextWindow'))
class ContextWindowBody(TypedDict):
    """The history that fits the budget, in the shape of `format` (README, "The context window")."""

    format: Literal['openai', 'responses', 'anthropic', 'memsvc']
    messages: Annotated[
        list[dict[str, Any]], Field(description="the request's messages (or Responses input items), oldest first")
    ]
    system: NotRequired[Annotated[str, Field(description='anthropic only: the system text, when there is one')]]
    tokens: Annotated[int, Field(ge=0, description='the count of messages and system under the encoding')]
    dropped: Annotated[int, Field(ge=0, description='stored messages left out')]
    first_id: Annotated[int | None, Field(description='the id of the oldest stored message included')]
    summary: Annotated[bool, Field(description='whether the summary is in the window')]


@with_config(ConfigDict(extra='forbid'))
class Success(TypedDict):
    success: Literal[True]


@with_config(ConfigDict(extra='forbid'))
class TruncatedBody(TypedDict):
    success: Literal[True]
    deleted: Annotated[int, Field(ge=0, description='how many messages were removed')]


@with_config(ConfigDict(extra='forbid'))
class Erased(TypedDict):
    deleted: Annotated[int, Field(ge=0, description='how many sessions this request erased')]


@with_config(ConfigDict(extra='forbid'))
class Status(TypedDict):
    status: str


@with_config(ConfigDict(extra='forbid'))
class ErrorDetail(TypedDict):
    code: str
    message: str


@with_config(ConfigDict(extra='forbid', title='Error'))
class ErrorBody(TypedDict):
    """Every error answer of `/api/v1/` and the operations routes."""

    error: ErrorDetail


# --- export and import: one session a line (README, "Export and import") --------------------------

MAX_MESSAGE_ID = 2**53 - 1
"""The largest message id (what JSON clients read exactly)."""


@with_config(ConfigDict(extra='forbid', title='LineMessage'))
class LineMessage(TypedDict):
    """A stored message in a line: checked as an append checks it, with its id and timestamp as stored."""

    id: Annotated[int, Field(ge=1, le=MAX_MESSAGE_ID)]
    role: Role
    content: Annotated[str, settings_bound(maxLength='max_content_chars')]
    name: NotRequired[ShortText | None]
    tool_call_id: NotRequired[ShortText | None]
    tool_calls: NotRequired[list[JsonObject] | None]
    metadata: NotRequired[Metadata | None]
    timestamp: AwareDatetime


@with_config(ConfigDict(extra='forbid', title='LineSummary'))
class LineSummary(TypedDict):
    content: Annotated[str, settings_bound(maxLength='max_content_chars')]
    through_id: Annotated[int, Field(ge=1, le=MAX_MESSAGE_ID, description='a message of the line')]
    updated_at: AwareDatetime


@with_config(ConfigDict(extra='forbid', title='SessionLine'))
class SessionLine(TypedDict):
    """One line of an export, and of an import: one session as it was at one moment, its messages last."""

    id: SessionId
    created_at: AwareDatetime
    updated_at: AwareDatetime
    metadata: Metadata
    summary: NotRequired[LineSummary | None]
    forked_from: NotRequired[ForkedFrom | None]
    next_id: Annotated[
        int, Field(ge=1, le=MAX_MESSAGE_ID + 1, description='the id the next appended message gets; above every id')
    ]
    messages: list[LineMessage]


@with_config(ConfigDict(extra='forbid', title='LineError'))
class LineError(TypedDict):
    line: Annotated[int, Field(ge=1, description='1 for the first line')]
    code: str
    message: str


@with_config(ConfigDict(extra='forbid', title='ImportResult'))
class ImportResult(TypedDict):
    imported: Annotated[int, Field(ge=0, description='sessions written')]
    skipped: Annotated[int, Field(ge=0, description='sessions that exist already, identical')]
    conflicts: Annotated[int, Field(ge=0, description='sessions that exist already, different, left as they are')]
    failed: Annotated[int, Field(ge=0, description='lines refused (nothing of them written)')]
    errors: Annotated[list[LineError], Field(description='why, for the first 1,000 lines refused')]


# --- stored records -----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SessionRecord:
    """A session without its messages. `metadata` is the JSON-encoded object; `forked_from` too (`fork_origin`),
    empty when the session is not a fork."""

    id: str
    created_at: datetime
    updated_at: datetime
    metadata: bytes
    version: int
    forked_from: bytes = b''


@dataclass(slots=True, frozen=True)
class StoredSession:
    record: SessionRecord
    messages: bytes
    """Its messages as one JSON array (`[]` when they were not asked for), as the API answers with them."""


@dataclass(slots=True, frozen=True)
class SearchHit:
    session_id: str
    message: bytes
    score: float


def fork_origin(session_id: str, message_id: int | None) -> bytes:
    """A fork's `forked_from` as stored and answered: `{"session_id", "message_id"}`."""
    return orjson.dumps({'session_id': session_id, 'message_id': message_id})


def encode_json(value: Any, field: str, option: int = 0) -> bytes:
    """orjson-encode a client value; values JSON cannot carry become a 422 naming `field`."""
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(field, f'cannot be stored as JSON ({exc})') from None


def sent_fields(message: NewMessage) -> dict[str, Any]:
    """The message's fields without those sent as null (which mean left out)."""
    return {key: value for key, value in message.items() if value is not None}


def encode_message(message: NewMessage, timestamp: datetime, field: str = 'message') -> bytes:
    """Serialize a message without its id; `with_id` adds the id when the store assigns it. Role and
    content come first (validation keeps the fields in their declared order), fields sent as null are
    left out, and the timestamp comes last."""
    out = sent_fields(message)
    out['timestamp'] = timestamp
    return encode_json(out, field, orjson.OPT_UTC_Z)


def timestamp_length(timestamp: datetime) -> int:
    """How many characters `timestamp`, a UTC time, takes in a message `encode_message` makes: orjson writes
    `2026-01-01T00:00:00.123456Z`, without the fraction on a whole second."""
    return 27 if timestamp.microsecond else 20


def with_id(seq: int, body: bytes) -> bytes:
    """Put `"id":seq` first into a message serialized by `encode_message` (which starts with `{`)."""
    return b'{"id":%d,%s' % (seq, body[1:])


def json_array(items: list[bytes]) -> bytes:
    """A JSON array of already-encoded items."""
    return b'[' + b','.join(items) + b']'


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
