"""The OpenAPI 3.1 document, built from the settings so that its bounds are the server's real ones.

Tests validate real responses against it (tests/conformance.py), so it cannot drift silently.
"""

from typing import Any

from memsvc import __version__
from memsvc.models import ROLES, SESSION_ID_PATTERN
from memsvc.routes import API, MAX_ID, MAX_QUERY_CHARS
from memsvc.settings import Settings

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {'$ref': f'#/components/schemas/{name}'}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {'description': description, 'content': {'application/json': {'schema': schema}}}
    if headers:
        out['headers'] = headers
    return out


_ERRORS = {
    400: 'malformed JSON, an invalid session id or an invalid query parameter',
    401: 'missing or wrong API key',
    404: 'the session does not exist',
    409: 'a session with this id exists, or a limit is reached (sessions per tenant, messages per session)',
    412: 'If-Match names another version than the current one (or the session does not exist)',
    413: 'the body is larger than MEMSVC_MAX_BODY_BYTES',
    415: 'the body is not sent as application/json',
    422: 'the body fails validation (the message names the field), or an Idempotency-Key is reused for another request',
    500: 'an unexpected error; the message carries the request id',
    501: 'this backend does not support the operation',
    503: 'the backend is unavailable; retry after Retry-After seconds',
}
_RETRY_AFTER = {'Retry-After': {'schema': {'type': 'integer'}, 'description': 'seconds to wait before retrying'}}


def _errors(*statuses: int) -> dict[str, Schema]:
    out = {}
    for status in (*statuses, 500, 503):
        headers = _RETRY_AFTER if status == 503 else None
        out[str(status)] = _json(_ref('Error'), _ERRORS[status], headers)
    return out


def _param(name: str, where: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {'name': name, 'in': where, 'required': required, 'schema': schema, 'description': description}


def _int(low: int, high: int, default: int | None = None) -> Schema:
    schema: Schema = {'type': 'integer', 'minimum': low, 'maximum': high}
    if default is not None:
        schema['default'] = default
    return schema


_ETAG = {'ETag': {'schema': {'type': 'string'}, 'description': 'the session version after this request, e.g. "3"'}}
_IF_MATCH = _param(
    'If-Match',
    'header',
    {'type': 'string', 'pattern': r'^(\*|"[0-9]{1,18}")$'},
    'only if the session is at this version (an ETag, e.g. "3"), or exists (*); 412 otherwise',
)
_IDEMPOTENCY_KEY = _param(
    'Idempotency-Key',
    'header',
    {'type': 'string', 'pattern': r'^[\x21-\x7e]{1,255}$'},
    'a retry with the same key and body returns the first answer and writes nothing again '
    '(remembered MEMSVC_IDEMPOTENCY_TTL_SECONDS, per session)',
)
_SESSION_ID = _param(
    'session_id', 'path', {'type': 'string', 'pattern': SESSION_ID_PATTERN}, 'the session id', required=True
)
_JSON_OBJECT: Schema = {
    'type': 'object',
    'description': 'any JSON object; numbers must be finite and integers fit in 64 bits',
}


def _schemas(settings: Settings) -> dict[str, Schema]:
    bounds = (
        f'at most {settings.max_metadata_keys} keys and {settings.max_metadata_bytes} bytes as JSON; '
        'numbers must be finite and integers fit in 64 bits'
    )
    metadata: Schema = {'type': 'object', 'maxProperties': settings.max_metadata_keys, 'description': bounds}
    optional_text: Schema = {'type': ['string', 'null'], 'maxLength': 256}
    message_fields: Schema = {
        'role': {'type': 'string', 'enum': list(ROLES)},
        'content': {'type': 'string'},
        'name': {'type': 'string'},
        'tool_call_id': {'type': 'string'},
        'tool_calls': {'type': 'array', 'items': _JSON_OBJECT},
        'metadata': _JSON_OBJECT,
    }
    return {
        'Error': {
            'type': 'object',
            'required': ['error'],
            'properties': {
                'error': {
                    'type': 'object',
                    'required': ['code', 'message'],
                    'properties': {'code': {'type': 'string'}, 'message': {'type': 'string'}},
                }
            },
        },
        'Message': {
            'type': 'object',
            'description': 'a stored message; optional fields appear only when the client sent them',
            'required': ['id', 'role', 'content', 'timestamp'],
            'additionalProperties': False,
            'properties': {
                'id': {'type': 'integer', 'minimum': 1, 'description': 'ordered within the session'},
                'timestamp': {'type': 'string', 'format': 'date-time'},
                **message_fields,
            },
        },
        'NewMessage': {
            'type': 'object',
            'required': ['role', 'content'],
            'additionalProperties': False,
            'properties': {
                'role': message_fields['role'],
                'content': {'type': 'string', 'maxLength': settings.max_content_chars},
                'name': optional_text,
                'tool_call_id': optional_text,
                'tool_calls': {'type': ['array', 'null'], 'items': _JSON_OBJECT},
                'metadata': {**metadata, 'type': ['object', 'null']},
            },
        },
        'Session': {
            'type': 'object',
            'required': ['id', 'created_at', 'updated_at', 'messages', 'metadata'],
            'additionalProperties': False,
            'properties': {
                'id': {'type': 'string', 'pattern': SESSION_ID_PATTERN},
                'created_at': {'type': 'string', 'format': 'date-time'},
                'updated_at': {'type': 'string', 'format': 'date-time'},
                'messages': {'type': 'array', 'items': _ref('Message')},
                'metadata': _JSON_OBJECT,
            },
        },
        'NewSession': {
            'type': 'object',
            'additionalProperties': False,
            'properties': {'id': {'type': ['string', 'null'], 'pattern': SESSION_ID_PATTERN}, 'metadata': metadata},
        },
        'SessionPatch': {
            'type': 'object',
            'required': ['metadata'],
            'additionalProperties': False,
            'properties': {
                'metadata': {'type': 'object', 'description': 'a JSON merge patch (RFC 7386): null deletes a key'}
            },
        },
        'SearchHit': {
            'type': 'object',
            'required': ['session_id', 'message', 'score'],
            'additionalProperties': False,
            'properties': {
                'session_id': {'type': 'string'},
                'message': _ref('Message'),
                'score': {'type': 'number', 'description': 'higher is more similar'},
            },
        },
        'Success': {
            'type': 'object',
            'required': ['success'],
            'additionalProperties': False,
            'properties': {'success': {'const': True}},
        },
        'Status': {'type': 'object', 'required': ['status'], 'properties': {'status': {'type': 'string'}}},
    }


def _body(schema: Schema, required: bool = True) -> Schema:
    return {'required': required, 'content': {'application/json': {'schema': schema}}}


def _search(session_scoped: bool) -> Schema:
    params = [
        _param(
            'q',
            'query',
            {'type': 'string', 'minLength': 1, 'maxLength': MAX_QUERY_CHARS, 'pattern': r'\S'},
            'the text (not only spaces)',
            True,
        ),
        _param('limit', 'query', _int(1, 50, 5), 'how many hits'),
        _param('role', 'query', {'type': 'string', 'enum': list(ROLES)}, 'only messages of this role'),
    ]
    if session_scoped:
        params.insert(0, _SESSION_ID)
    else:
        params.append(
            _param('session_id', 'query', {'type': 'string', 'pattern': SESSION_ID_PATTERN}, 'only this session')
        )
    return {
        'get': {
            'operationId': 'searchSession' if session_scoped else 'searchAll',
            'summary': 'Semantic search over message content (Chroma backend), best first',
            'description': 'score is 1 - cosine distance (higher = more similar). 404 when the session to search '
            '(the path, or `session_id`) does not exist; 501 on a store without search.',
            'parameters': params,
            'responses': {
                '200': _json({'type': 'array', 'items': _ref('SearchHit')}, 'hits, best first'),
                **_errors(400, 401, 404, 501),
            },
        }
    }


def build_openapi(settings: Settings) -> Schema:
    session_list = {'type': 'array', 'items': _ref('Session')}
    messages = {'type': 'array', 'items': _ref('Message')}
    batch = {'type': 'array', 'items': _ref('NewMessage'), 'minItems': 1, 'maxItems': settings.max_batch}
    link = {'Link': {'schema': {'type': 'string'}, 'description': '`<url>; rel="next"` when more sessions follow'}}
    location = {'Location': {'schema': {'type': 'string'}, 'description': 'the path of the new session'}}
    document: Schema = {
        'openapi': '3.1.0',
        'info': {'title': 'memsvc', 'version': __version__, 'description': 'Chat memory for LLM gateways.'},
        'paths': {
            f'{API}/sessions': {
                'get': {
                    'operationId': 'listSessions',
                    'summary': 'List sessions, newest updated_at first',
                    'parameters': [
                        _param('limit', 'query', _int(1, 1000, 100), 'page size'),
                        _param(
                            'cursor',
                            'query',
                            {'type': 'string', 'minLength': 1, 'pattern': '^[A-Za-z0-9_-]+$'},
                            'opaque; only from the Link header of the previous page',
                        ),
                        _param('include_messages', 'query', {'type': 'boolean', 'default': True}, 'false: no messages'),
                    ],
                    'responses': {'200': _json(session_list, 'a page of sessions', link), **_errors(400, 401)},
                },
                'post': {
                    'operationId': 'createSession',
                    'summary': 'Create a session; an empty body creates one with empty metadata',
                    'parameters': [_IDEMPOTENCY_KEY],
                    'requestBody': _body(_ref('NewSession'), required=False),
                    'responses': {
                        '201': _json(_ref('Session'), 'the new session', {**location, **_ETAG}),
                        **_errors(400, 401, 409, 413, 415, 422),
                    },
                },
            },
            f'{API}/sessions/{{session_id}}': {
                'parameters': [_SESSION_ID],
                'get': {
                    'operationId': 'getSession',
                    'summary': 'A session with all its messages',
                    'responses': {'200': _json(_ref('Session'), 'the session', _ETAG), **_errors(400, 401, 404)},
                },
                'patch': {
                    'operationId': 'updateSession',
                    'summary': 'Merge metadata (JSON merge patch: null deletes a key)',
                    'parameters': [_IF_MATCH],
                    'requestBody': _body(_ref('SessionPatch')),
                    'responses': {
                        '200': _json(_ref('Session'), 'the session after the change', _ETAG),
                        **_errors(400, 401, 404, 412, 413, 415, 422),
                    },
                },
                'delete': {
                    'operationId': 'deleteSession',
                    'summary': 'Delete a session and its messages',
                    'parameters': [_IF_MATCH],
                    'responses': {'200': _json(_ref('Success'), 'deleted'), **_errors(400, 401, 404, 412)},
                },
            },
            f'{API}/sessions/{{session_id}}/messages': {
                'parameters': [_SESSION_ID],
                'get': {
                    'operationId': 'getMessages',
                    'summary': 'Messages, oldest first',
                    'description': 'Without `after`, `limit` takes the last N (below `before`); with `after`, '
                    'the first N above it.',
                    'parameters': [
                        _param('limit', 'query', _int(1, 10_000), 'at most this many'),
                        _param('before', 'query', _int(0, MAX_ID), 'only ids below this one'),
                        _param('after', 'query', _int(0, MAX_ID), 'only ids above this one'),
                    ],
                    'responses': {'200': _json(messages, 'the messages'), **_errors(400, 401, 404)},
                },
                'post': {
                    'operationId': 'addMessages',
                    'summary': 'Append a message, or an array of messages atomically; creates the session if missing',
                    'parameters': [_IF_MATCH, _IDEMPOTENCY_KEY],
                    'requestBody': _body({'oneOf': [_ref('NewMessage'), batch]}),
                    'responses': {
                        '201': _json(
                            {'oneOf': [_ref('Message'), messages]}, 'what was stored, in the shape sent', _ETAG
                        ),
                        **_errors(400, 401, 409, 412, 413, 415, 422),
                    },
                },
                'delete': {
                    'operationId': 'clearMessages',
                    'summary': 'Remove all messages; the session and its metadata stay',
                    'parameters': [_IF_MATCH],
                    'responses': {'200': _json(_ref('Success'), 'cleared', _ETAG), **_errors(400, 401, 404, 412)},
                },
            },
            f'{API}/sessions/{{session_id}}/search': _search(session_scoped=True),
            f'{API}/search': _search(session_scoped=False),
            '/healthz': {
                'get': {
                    'operationId': 'healthz',
                    'summary': 'The process is alive',
                    'security': [],
                    'responses': {'200': _json(_ref('Status'), 'alive')},
                }
            },
            '/readyz': {
                'get': {
                    'operationId': 'readyz',
                    'summary': 'The backend answers',
                    'security': [],
                    'responses': {
                        '200': _json(_ref('Status'), 'ready'),
                        '503': _json(_ref('Error'), _ERRORS[503], _RETRY_AFTER),
                    },
                }
            },
            '/metrics': {
                'get': {
                    'operationId': 'metrics',
                    'summary': 'Prometheus metrics (text format), for every worker process',
                    'security': [],
                    'responses': {'200': {'description': 'the metrics', 'content': {'text/plain': {}}}},
                }
            },
            '/api/v1/openapi.json': {
                'get': {
                    'operationId': 'openapi',
                    'summary': 'This document',
                    'responses': {
                        '200': {'description': 'the OpenAPI document', 'content': {'application/json': {}}},
                        '401': _json(_ref('Error'), _ERRORS[401]),
                    },
                }
            },
        },
        'components': {'schemas': _schemas(settings)},
    }
    if settings.tenant_keys() is not None:
        document['components']['securitySchemes'] = {'apiKey': {'type': 'http', 'scheme': 'bearer'}}
        document['security'] = [{'apiKey': []}]
    return document
