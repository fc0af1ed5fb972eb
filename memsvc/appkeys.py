"""Typed keys for the application and request state."""

from aiohttp import web

from memsvc.console.files import ConsoleFiles
from memsvc.events import Hub
from memsvc.manager import AsyncMemoryManager
from memsvc.metrics import Metrics
from memsvc.settings import Settings

SETTINGS = web.AppKey('settings', Settings)
MANAGER = web.AppKey('manager', AsyncMemoryManager)
OPENAPI_JSON = web.AppKey('openapi_json', bytes)
METRICS = web.AppKey('metrics', Metrics)
HUB = web.AppKey('hub', Hub)
STREAMED_BODIES = web.AppKey('streamed_bodies', frozenset[str])
"""The paths whose bodies are read as they arrive, without `MEMSVC_MAX_BODY_BYTES` (`declare.LinesBody`)."""
CONSOLE_FILES = web.AppKey('console_files', ConsoleFiles)

TENANT = web.RequestKey('tenant', str)
