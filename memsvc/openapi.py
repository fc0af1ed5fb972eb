"""The OpenAPI 3.1 document, written from the route declarations (`routes/`, see `declare.py`) and the
pydantic types they name, with the bounds that come from the settings filled in: it states this server's
real limits. Nothing here describes a route by hand.

Tests validate real responses against it (tests/conformance.py) and fuzz the server from it
(tests/test_fuzz.py), so it cannot drift silently.
"""

import re
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from memsvc import __version__
from memsvc.compat.openai import conversations
from memsvc.declare import Operation, Reply, ResponseHeader, RouteTable, Schema
from memsvc.models import SETTINGS_BOUND
from memsvc.routes import routes
from memsvc.settings import Settings

COMPONENTS = '#/components/schemas/'
_ERRORS = {
    400: 'malformed JSON, an invalid session id or an invalid query parameter',
    401: 'missing or wrong API key',
    404: 'the session does not exist (summary routes: or it has no summary, `summary_not_found`)',
    409: 'a session with this id exists, or a limit is reached (sessions per tenant, messages per session)',
    412: 'If-Match names another version than the current one (or the session does not exist)',
    413: 'the body is larger than MEMSVC_MAX_BODY_BYTES',
    415: 'the body is not sent as application/json (the import: as application/x-ndjson)',
    422: 'the body fails validation (the message names the field), an Idempotency-Key is reused for another request, '
    'a summary names a message that is not stored, or the context budget is too small for the pinned messages',
    500: 'an unexpected error; the message carries the request id',
    501: 'this backend does not support the operation',
    503: 'the backend is unavailable; retry after Retry-After seconds',
}
_RETRY_AFTER = ResponseHeader('Retry-After', 'seconds to wait before retrying', {'type': 'integer'})
_TEMPLATE_REGEX = re.compile(r'\{(\w+):[^}]*\}')


def build_openapi(settings: Settings, tables: tuple[RouteTable, ...] = (routes, conversations)) -> Schema:
    """The document for `tables`: by default the app's, ours and `/v1`'s (`memsvc.compat.openai`)."""
    schemas = _Schemas(settings)
    paths: dict[str, Schema] = {}
    for table in tables:
        error = schemas.of(table.error_body, 'serialization')
        for declared in table.declared:
            item = paths.setdefault(_TEMPLATE_REGEX.sub(r'{\1}', declared.path), {})
            item[declared.method.lower()] = _operation(declared.operation, error, schemas, settings)
    document: Schema = {
        'openapi': '3.1.0',
        'info': {'title': 'memsvc', 'version': __version__, 'description': 'Chat memory for LLM gateways.'},
        'paths': paths,
        'components': {'schemas': schemas.components()},
    }
    if settings.tenant_keys() is not None:
        document['components']['securitySchemes'] = {'apiKey': {'type': 'http', 'scheme': 'bearer'}}
        document['security'] = [{'apiKey': []}]
    return document


def _operation(operation: Operation, error: Schema, schemas: '_Schemas', settings: Settings) -> Schema:
    out: Schema = {'operationId': operation.id, 'summary': operation.summary}
    if operation.description is not None:
        out['description'] = operation.description
    if operation.open:
        out['security'] = []
    parameters = [parameter for param in operation.params for parameter in param.document(settings)]
    if parameters:
        out['parameters'] = parameters
    if operation.body:
        content: Schema = {}
        for body in operation.body:
            content.setdefault(body.media_type, []).append(schemas.of(body.type, 'validation'))
        out['requestBody'] = {
            'required': all(body.required for body in operation.body),
            'content': {
                media: {'schema': found[0] if len(found) == 1 else {'oneOf': found}} for media, found in content.items()
            },
        }
    responses = {str(status): _reply(reply, schemas) for status, reply in operation.replies.items()}
    for status in (*operation.errors, *((500, 503) if operation.store else ())):
        headers = (_RETRY_AFTER,) if status == 503 else ()
        responses[str(status)] = _reply(Reply(None, _ERRORS[status], headers), schemas, error)
    out['responses'] = responses
    return out


def _reply(reply: Reply, schemas: '_Schemas', schema: Schema | None = None) -> Schema:
    if schema is None and reply.type is not None:
        schema = schemas.of(reply.type, 'serialization')
    out: Schema = {
        'description': reply.description,
        'content': {reply.media_type: {} if schema is None else {'schema': schema}},
    }
    if reply.headers:
        out['headers'] = {
            header.name: {'schema': header.schema, 'description': header.description} for header in reply.headers
        }
    return out


class _Schemas:
    """JSON Schemas of pydantic types, their `$defs` gathered as the document's components, named by their
    title (a class's name unless its config gives another), and with the settings' bounds filled in."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.model_dump()
        self._defs: dict[str, Schema] = {}

    def of(self, type_: Any, mode: JsonSchemaMode) -> Schema:
        # this form refers to a named type, like those it contains, rather than inlining it
        generated, top = TypeAdapter.json_schemas([(0, mode, TypeAdapter(type_))], ref_template=COMPONENTS + '{model}')
        schema = generated[0, mode]
        defs = top.get('$defs', {})
        renamed = {name: str(found.get('title', name)) for name, found in defs.items()}
        for name, found in defs.items():
            component = self._finish(found, renamed)
            previous = self._defs.setdefault(renamed[name], component)
            assert previous == component, f'two types are named {renamed[name]} in the document'
        finished: Schema = self._finish(schema, renamed)
        return finished

    def components(self) -> dict[str, Schema]:
        return dict(sorted(self._defs.items()))

    def _finish(self, schema: Any, renamed: dict[str, str]) -> Any:
        """A copy without pydantic's titles, refs renamed, `SETTINGS_BOUND` keywords given their values."""
        if isinstance(schema, list):
            return [self._finish(item, renamed) for item in schema]
        if not isinstance(schema, dict):
            return schema
        out: Schema = {}
        bounds: Schema = {}
        for key, value in schema.items():
            if key == 'title' and isinstance(value, str):
                continue
            if key == '$ref':
                out[key] = COMPONENTS + renamed.get(value.removeprefix(COMPONENTS), value.removeprefix(COMPONENTS))
            elif key in ('properties', 'patternProperties'):
                out[key] = {name: self._finish(item, renamed) for name, item in value.items()}
            elif key == SETTINGS_BOUND:
                bounds.update(self._bounds(value))
            else:
                out[key] = self._finish(value, renamed)
        return out | bounds

    def _bounds(self, keywords: dict[str, str]) -> Iterator[tuple[str, Any]]:
        for keyword, source in keywords.items():
            yield keyword, source.format(**self._settings) if '{' in source else self._settings[source]
