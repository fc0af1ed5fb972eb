"""Checks real responses against the app's own OpenAPI document.

Every request made through `CheckedClient` is checked: the status must be one the document lists
for that operation, the body must validate against the listed schema (JSON Schema 2020-12, with
formats such as date-time checked), and documented headers such as `Location` must be present.
"""

import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from multidict import CIMultiDictProxy

from memsvc.openapi import build_openapi
from memsvc.settings import Settings

ALWAYS_PRESENT_HEADERS = {'Location', 'Retry-After', 'ETag'}


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error_code(self) -> str:
        code = self.json()['error']['code']
        assert isinstance(code, str)
        return code


class Conformance:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._routes = [
            (re.compile('^' + re.sub(r'\{[^}]+\}', '[^/]+', template) + '$'), template)
            for template in document['paths']
        ]
        self.checked: list[tuple[str, str, int]] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> 'Conformance':
        return cls(build_openapi(settings))

    def template(self, path: str) -> str | None:
        return next((template for pattern, template in self._routes if pattern.match(path)), None)

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        root = {'allOf': [schema], 'components': self.document['components']}
        Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(instance)

    def check(self, method: str, path: str, reply: Reply) -> None:
        """Assert that `reply` is what the document promises for `method path`."""
        assert reply.headers.get('X-Request-ID'), 'every response carries X-Request-ID'
        content_type = reply.headers.get('Content-Type', '').split(';')[0]
        if reply.status >= 400:
            assert content_type == 'application/json', reply.headers
        template = self.template(path)
        operation = self.document['paths'][template].get(method.lower()) if template else None
        if operation is None:  # unknown route or method: the error body is still ours
            assert reply.status in (404, 405), (method, path, reply.status)
            self.validate({'$ref': '#/components/schemas/Error'}, reply.json())
            return
        listed = operation['responses'].get(str(reply.status))
        assert listed is not None, f'{method} {template} answered {reply.status}, which the document does not list'
        for header in listed.get('headers', {}):
            if header in ALWAYS_PRESENT_HEADERS:
                assert header in reply.headers, f'{method} {template} {reply.status} lacks the {header} header'
        content = listed.get('content', {})
        assert not content or content_type in content, f'{method} {template} answered {content_type}'
        schema = content.get('application/json', {}).get('schema')
        if schema is not None and method != 'HEAD':
            self.validate(schema, reply.json())
        self.checked.append((method, template or path, reply.status))


class CheckedClient:
    """aiohttp's test client, with every reply checked by `Conformance`."""

    def __init__(self, client: TestClient[Any, Any], conformance: Conformance) -> None:
        self.raw = client
        self.conformance = conformance

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.raw.request(method, path, **kwargs) as response:
            reply = Reply(response.status, response.headers, await response.read())
        self.conformance.check(method, response.url.raw_path, reply)
        return reply

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request('GET', path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request('POST', path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Reply:
        return await self.request('PUT', path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request('PATCH', path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request('DELETE', path, **kwargs)
