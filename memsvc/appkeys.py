"""Typed keys for the application and request state."""

from aiohttp import web

from memsvc.auth import Keyring
from memsvc.manager import AsyncMemoryManager
from memsvc.metrics import Metrics
from memsvc.settings import Settings

SETTINGS = web.AppKey('settings', Settings)
MANAGER = web.AppKey('manager', AsyncMemoryManager)
OPENAPI_JSON = web.AppKey('openapi_json', bytes)
KEYRING = web.AppKey[Keyring | None]('keyring')
METRICS = web.AppKey('metrics', Metrics)

REQUEST_ID = web.RequestKey('request_id', str)
TENANT = web.RequestKey('tenant', str)
