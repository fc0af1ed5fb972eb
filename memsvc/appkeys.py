"""Typed keys for the application and request state."""

from aiohttp import web

from memsvc.events import Hub
from memsvc.manager import AsyncMemoryManager
from memsvc.metrics import Metrics
from memsvc.settings import Settings

SETTINGS = web.AppKey('settings', Settings)
MANAGER = web.AppKey('manager', AsyncMemoryManager)
OPENAPI_JSON = web.AppKey('openapi_json', bytes)
METRICS = web.AppKey('metrics', Metrics)
HUB = web.AppKey('hub', Hub)

TENANT = web.RequestKey('tenant', str)
