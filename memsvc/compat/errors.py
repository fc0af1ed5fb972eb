"""`/v1`'s error shape, OpenAI's (SPEC-2 §4): `{"error": {"message", "type", "param", "code"}}`, with the status of
the one error map (`endpoint.STATUS_FOR`), so that the SDKs raise their own classes for it."""

from typing import Literal

import orjson
from aiohttp import web
from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict

from memsvc.endpoint import headers_for, status_for
from memsvc.errors import InvalidHeader, InvalidInput, InvalidParameter, MemsvcError


@with_config(ConfigDict(extra='forbid', title='OpenAIErrorDetail'))
class OpenAIErrorDetail(TypedDict):
    message: str
    type: Literal['invalid_request_error', 'server_error']
    param: str | None
    code: str


@with_config(ConfigDict(extra='forbid', title='OpenAIError'))
class OpenAIErrorBody(TypedDict):
    """Every error answer of `/v1`."""

    error: OpenAIErrorDetail


def _param(exc: MemsvcError) -> str | None:
    if isinstance(exc, InvalidParameter | InvalidHeader):
        return exc.name
    if isinstance(exc, InvalidInput):
        return exc.field or None
    return None


def openai_error(exc: MemsvcError) -> web.Response:
    """An error in OpenAI's shape, its status from the one error map (`endpoint.STATUS_FOR`)."""
    status = status_for(exc)
    if status == 422:
        status = 400
    kind = 'server_error' if status >= 500 else 'invalid_request_error'
    body = {'error': {'message': exc.message, 'type': kind, 'param': _param(exc), 'code': exc.code}}
    headers = headers_for(exc) or {}
    if status == 409:
        headers['x-should-retry'] = 'false'
    return web.Response(status=status, body=orjson.dumps(body), content_type='application/json', headers=headers)
