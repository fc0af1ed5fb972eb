"""Logging: every line carries the id of the request it belongs to; `MEMSVC_LOG_FORMAT=json` for one
JSON object per line (time, level, logger, message, request_id and, for errors, the exception)."""

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

import orjson

CURRENT_REQUEST_ID: ContextVar[str] = ContextVar('memsvc_request_id', default='-')
"""Set by `endpoint.py` around every handler; aiohttp runs each request in a task of its own, so it is per request."""

TEXT_FORMAT = '%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s'


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = CURRENT_REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            'time': datetime.fromtimestamp(record.created, UTC),
            'level': record.levelname,
            'logger': record.name,
            'message': record.getMessage(),
            'request_id': getattr(record, 'request_id', '-'),
        }
        if record.exc_info:
            line['exception'] = self.formatException(record.exc_info)
        return orjson.dumps(line, option=orjson.OPT_UTC_Z).decode()


def configure_logging(level: str, form: Literal['text', 'json']) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if form == 'json' else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
