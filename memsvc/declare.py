"""What a route takes and answers, declared once: the handler reads its request through these objects,
and `openapi.py` writes the document from the same objects, so the two cannot disagree.

    LIMIT = int_query('limit', 1, 1000, default=100, description='page size')

    @routes.get('/things', Operation('listThings', 'List things', {200: Reply(list[Thing], 'a page')},
                                     errors=(400, 401), params=(LIMIT,)))
    async def list_things(request: web.Request) -> web.Response:
        limit = LIMIT.get(request)          # 400 invalid_parameter outside 1..1000, 100 when absent

Parameters raise the request errors of `errors.py`. A declaration holds no state, and reading a parameter
does no more than a check written in the handler would: a query value is parsed only when it is present.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import TypeAdapter

from memsvc.errors import InvalidHeader, InvalidInput, InvalidParameter, MalformedJson, UnsupportedMediaType
from memsvc.lines import LineReader
from memsvc.models import ErrorBody

if TYPE_CHECKING:
    from memsvc.endpoint import Envelope
    from memsvc.settings import Settings

Schema = dict[str, Any]
T = TypeVar('T')
C = TypeVar('C', bound=str)
Method = Literal['GET', 'POST', 'PUT', 'PATCH', 'DELETE']
_DIGITS = re.compile(r'[0-9]{1,16}')
_JSON_TYPE = re.compile(r'^application/([a-z0-9.+-]+\+)?json$')


def _parameter(name: str, where: str, schema: Schema, description: str, required: bool) -> Schema:
    return {'name': name, 'in': where, 'required': required, 'schema': schema, 'description': description}


# --- parameters ------------------------------------------------------------------------------


class Query(Generic[T]):
    """One query parameter: given at most once, parsed by `parse` (a ValueError means out of bounds,
    answered as 400 `invalid_parameter` with `problem`), `default` when absent."""

    __slots__ = ('_parse', 'default', 'description', 'name', 'problem', 'required', 'schema')

    def __init__(
        self,
        name: str,
        parse: Callable[[str], T],
        default: T,
        *,
        schema: Schema,
        description: str,
        problem: str,
        required: bool = False,
    ) -> None:
        self.name, self._parse, self.default, self.schema = name, parse, default, schema
        self.description, self.problem, self.required = description, problem, required

    def get(self, request: web.Request) -> T:
        query = request.query
        if self.name not in query:
            if self.required:
                raise InvalidParameter(self.name, self.problem)
            return self.default
        values = query.getall(self.name)
        if len(values) > 1:
            raise InvalidParameter(self.name, 'give it at most once')
        try:
            return self._parse(values[0])
        except ValueError:
            raise InvalidParameter(self.name, self.problem) from None

    def document(self, settings: 'Settings') -> list[Schema]:
        return [_parameter(self.name, 'query', self.schema, self.description, self.required)]


def parse_int(raw: str, low: int, high: int) -> int:
    """`raw` as an integer from `low` to `high`, in decimal digits only (no sign, no spaces); ValueError otherwise."""
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ValueError(raw)
    return int(raw)


@overload
def int_query(name: str, low: int, high: int, *, default: int, description: str) -> Query[int]: ...
@overload
def int_query(name: str, low: int, high: int, *, default: None = None, description: str) -> Query[int | None]: ...
def int_query(name: str, low: int, high: int, *, default: int | None = None, description: str) -> Query[Any]:
    """An integer from `low` to `high`, in decimal digits only (no sign, no spaces)."""

    def parse(raw: str) -> int:
        return parse_int(raw, low, high)

    schema: Schema = {'type': 'integer', 'minimum': low, 'maximum': high}
    if default is not None:
        schema['default'] = default
    return Query(
        name, parse, default, schema=schema, description=description, problem=f'must be an integer from {low} to {high}'
    )


def bool_query(name: str, *, default: bool, description: str) -> Query[bool]:
    def parse(raw: str) -> bool:
        if raw not in ('true', 'false'):
            raise ValueError(raw)
        return raw == 'true'

    schema = {'type': 'boolean', 'default': default}
    return Query(name, parse, default, schema=schema, description=description, problem='must be true or false')


def choice_query(name: str, choices: tuple[C, ...], *, default: C, description: str) -> Query[C]:
    """One of `choices` exactly (no case folding, no trimming), `default` when absent."""

    def parse(raw: str) -> C:
        return choices[choices.index(raw)]  # the choice itself, typed; a ValueError for none of them

    schema = {'type': 'string', 'enum': list(choices), 'default': default}
    problem = f'must be one of {", ".join(choices)}'
    return Query(name, parse, default, schema=schema, description=description, problem=problem)


def text_query(
    name: str,
    *,
    schema: Schema,
    description: str,
    problem: str = '',
    check: Callable[[str], bool] | None = None,
    required: bool = False,
) -> Query[str | None]:
    """A string, refused when `check` says no. A check that the manager makes (a session id, a cursor)
    is left to the manager, which raises its own error."""

    def parse(raw: str) -> str:
        if check is not None and not check(raw):
            raise ValueError(raw)
        return raw

    return Query(name, parse, None, schema=schema, description=description, problem=problem, required=required)


def nonblank_text_query(name: str, max_chars: int, *, what: str, description: str) -> Query[str | None]:
    """A required text of 1 to `max_chars` characters, not only spaces: the document's schema and the check
    are both made from `max_chars`. `what` names the text in the error (e.g. 'a search text')."""
    return text_query(
        name,
        schema={'type': 'string', 'minLength': 1, 'maxLength': max_chars, 'pattern': r'\S'},
        description=description,
        problem=f'give {what} of 1 to {max_chars} characters, not only spaces',
        check=lambda text: bool(text.strip()) and len(text) <= max_chars,
        required=True,
    )


class QueryFamily:
    """Parameters named `<prefix><key><suffix>` (e.g. `metadata.user_id=123`, or `metadata[user_id]=123` with the
    suffix `]`), keys the settings allow: read as {key: value}; any other key under the prefix is 400 naming the
    allowed ones. The document lists one parameter per allowed key (the sessions listing's `metadata.<key>`
    filters)."""

    __slots__ = ('description', 'keys', 'prefix', 'schema', 'suffix')

    def __init__(
        self,
        prefix: str,
        keys: Callable[['Settings'], Sequence[str]],
        *,
        schema: Schema,
        description: str,
        suffix: str = '',
    ) -> None:
        self.prefix, self.keys, self.schema, self.description = prefix, keys, schema, description
        self.suffix = suffix

    def get(self, request: web.Request, allowed: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, value in request.query.items():
            if not name.startswith(self.prefix):
                continue
            key = name[len(self.prefix) :]
            if self.suffix:
                key = key[: -len(self.suffix)] if key.endswith(self.suffix) else ''
            if key not in allowed:
                names = ', '.join(self.prefix + k + self.suffix for k in allowed)
                raise InvalidParameter(name, f'filter on one of {names}')
            if key in found:
                raise InvalidParameter(name, 'give it at most once')
            found[key] = value
        return found

    def document(self, settings: 'Settings') -> list[Schema]:
        return [
            _parameter(self.prefix + key + self.suffix, 'query', self.schema, self.description.format(key=key), False)
            for key in self.keys(settings)
        ]


class ListQuery:
    """A query parameter that may be given any number of times, also as `name[]` (how OpenAI's SDKs write an
    array): read as the list of its values, in order. Values are not checked: it is for parameters accepted
    for compatibility, whose set of values grows with another service (e.g. `/v1`'s `include`)."""

    __slots__ = ('description', 'name')

    def __init__(self, name: str, *, description: str) -> None:
        self.name, self.description = name, description

    def get(self, request: web.Request) -> list[str]:
        query = request.query
        if self.name not in query and self.name + '[]' not in query:
            return []
        return query.getall(self.name, []) + query.getall(self.name + '[]', [])

    def document(self, settings: 'Settings') -> list[Schema]:
        schema = {'type': 'array', 'items': {'type': 'string'}}
        return [_parameter(name, 'query', schema, self.description, False) for name in (self.name, self.name + '[]')]


class Header(Generic[T]):
    """A request header that must match `pattern` in full (with `strip`, after stripping spaces); `parse`
    turns the match into the value. A mismatch is 400 `invalid_header` with `problem`."""

    __slots__ = ('_parse', '_pattern', '_strip', 'description', 'name', 'pattern', 'problem')

    def __init__(
        self,
        name: str,
        pattern: str,
        parse: Callable[[re.Match[str]], T],
        *,
        description: str,
        problem: str,
        strip: bool = False,
    ) -> None:
        self.name, self.pattern, self._pattern, self._parse = name, pattern, re.compile(pattern), parse
        self.description, self.problem, self._strip = description, problem, strip

    def get(self, request: web.Request) -> T | None:
        raw = request.headers.get(self.name)
        if raw is None:
            return None
        match = self._pattern.fullmatch(raw.strip() if self._strip else raw)
        if match is None:
            raise InvalidHeader(self.name, self.problem)
        return self._parse(match)

    def document(self, settings: 'Settings') -> list[Schema]:
        schema = {'type': 'string', 'pattern': f'^({self.pattern})$'}
        return [_parameter(self.name, 'header', schema, self.description, False)]


class PathParam(Generic[T]):
    """A `{name}` segment of the path, checked and converted by `check` (which raises the error to answer);
    documented as a string of `pattern`, or as `schema`."""

    __slots__ = ('check', 'description', 'name', 'pattern', 'schema')

    def __init__(
        self, name: str, pattern: str, check: Callable[[str], T], *, description: str, schema: Schema | None = None
    ) -> None:
        self.name, self.pattern, self.check, self.description = name, pattern, check, description
        self.schema = schema

    def get(self, request: web.Request) -> T:
        return self.check(request.match_info[self.name])

    def document(self, settings: 'Settings') -> list[Schema]:
        schema = self.schema or {'type': 'string', 'pattern': self.pattern}
        return [_parameter(self.name, 'path', schema, self.description, True)]


Param = Query[Any] | ListQuery | QueryFamily | Header[Any] | PathParam[Any]


# --- bodies ----------------------------------------------------------------------------------


class JsonBody(Generic[T]):
    """A JSON request body validated into `type` (a pydantic model, TypedDict or annotated type)."""

    __slots__ = ('adapter', 'required', 'type')
    media_type = 'application/json'

    def __init__(self, type: Any, *, required: bool = True) -> None:
        self.type, self.required = type, required
        self.adapter: TypeAdapter[T] = TypeAdapter(type)

    async def read(self, request: web.Request) -> bytes | None:
        """The raw body; None when it is empty and not required. 400 when a required one is empty, 415 when
        it is not sent as JSON (413 beyond `MEMSVC_MAX_BODY_BYTES` comes from aiohttp's read)."""
        raw = await request.read()
        if not raw.strip():
            if not self.required:
                return None
            raise MalformedJson('the request needs a JSON body')
        if request.headers.get('Content-Type') != 'application/json' and not _JSON_TYPE.fullmatch(request.content_type):
            raise UnsupportedMediaType()
        return raw

    def parse(self, raw: bytes) -> T:
        """Parse and validate in one pass: 400 `malformed_json`, or 422 naming up to three fields."""
        try:
            return self.adapter.validate_json(raw)
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            if any(err['type'] == 'json_invalid' for err in errors):
                raise MalformedJson(f'the body is not valid JSON: {errors[0]["msg"]}') from None
            problem = InvalidInput('', '; '.join(f'{_field(err["loc"])}: {err["msg"]}' for err in errors[:3]))
            problem.field = _field(errors[0]['loc'])  # the first field at fault, for an envelope that names one
            raise problem from None


class LinesBody:
    """A body of JSON lines (NDJSON), each one `type`, read line by line as it arrives, never whole: no
    `MEMSVC_MAX_BODY_BYTES` bounds it (the edge lets its `Content-Length` pass, `edge.EdgeServer`), a per-line limit
    does (`memsvc.lines`). Its handler checks each line itself."""

    __slots__ = ('type',)
    required = True
    media_type = 'application/x-ndjson'
    accepted = ('application/x-ndjson', 'application/jsonl', 'application/json')

    def __init__(self, type: Any) -> None:
        self.type = type

    def reader(self, request: web.Request, limit: int) -> LineReader:
        """The lines of `request`, each at most `limit` bytes; 415 for a body not sent as NDJSON."""
        if request.content_type not in self.accepted:
            raise UnsupportedMediaType('send the body as JSON lines with "Content-Type: application/x-ndjson"')
        return LineReader(request.content.readany, limit)


Body = JsonBody[Any] | LinesBody


def _field(loc: tuple[int | str, ...]) -> str:
    out = ''
    for part in loc:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else part)
    return out or 'body'


# --- answers and operations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    name: str
    description: str
    schema: Schema = field(default_factory=lambda: {'type': 'string'})


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: its body's type (None: not described), media type and headers."""

    type: Any
    description: str
    headers: tuple[ResponseHeader, ...] = ()
    media_type: str = 'application/json'


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path. `errors` lists the error statuses it answers besides 500 and 503, which
    every route that reaches the store may answer (`store=False` leaves them out); `open` routes need no
    API key."""

    id: str
    summary: str
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: tuple[Body, ...] = ()
    description: str | None = None
    store: bool = True
    open: bool = False


@dataclass(frozen=True, slots=True)
class Declared:
    method: Method
    path: str
    operation: Operation
    handler: Handler


class RouteTable:
    """Routes with their declarations, in the order added: what `endpoints()` wraps and `openapi.py` documents.
    `error_body` is the type of its error answers and `envelope` how the endpoint wrapper writes them (None:
    ours): the `/v1` API (`memsvc.compat.openai`) has a table of its own with OpenAI's error shape. A table
    with a `prefix` also answers the paths under it that no route serves in its envelope."""

    def __init__(self, error_body: Any = ErrorBody, envelope: 'Envelope | None' = None, prefix: str = '') -> None:
        self.error_body, self.envelope, self.prefix = error_body, envelope, prefix
        self.declared: list[Declared] = []

    def route(self, method: Method, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.declared.append(Declared(method, path, operation, handler))
            return handler

        return register

    def get(self, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        return self.route('GET', path, operation)

    def post(self, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        return self.route('POST', path, operation)

    def put(self, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        return self.route('PUT', path, operation)

    def patch(self, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        return self.route('PATCH', path, operation)

    def delete(self, path: str, operation: Operation) -> Callable[[Handler], Handler]:
        return self.route('DELETE', path, operation)
