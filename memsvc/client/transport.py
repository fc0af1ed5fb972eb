"""How the client sends a request: its connections (`memsvc.client.http` for calls, an aiohttp session for event
streams), the API key, the error answers turned into exceptions, and the retry rules.

What is retried, and when:

- *reads* (GET) on a 503, a connection error or a timeout: they change nothing;
- *keyed writes* (create, append, fork, the summary's PUT and DELETE) on the same: the client sends an
  `Idempotency-Key`, generated once per call (or given by the caller) and the same on every attempt, so a
  retry whose first attempt did land returns the first answer and writes nothing again;
- *other writes* (PATCH, the DELETEs) only when the request surely never reached the server: the connection
  could not be made, or the edge refused the connection before reading it (503 `too_many_connections`). A
  write is never retried without a key when it may have been applied.

Each call makes at most `Retries.attempts` attempts within `Retries.deadline` seconds; between attempts it waits
an exponential backoff with jitter (`backoff`, doubling, up to `max_backoff`), and at least what the answer's
`Retry-After` asks. When the attempts or the time run out, the last error is raised: the error answer as its
`ApiError` class, or `TransportError` when there was no answer.
"""

import asyncio
import contextlib
import os
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
import orjson
import yarl

from memsvc.client.errors import ApiError, TransportError, error_for
from memsvc.client.http import ConnectFailed, ConnectionBroke, HttpPool

TARGET_CACHE_SIZE = 4096
EDGE_REFUSALS = frozenset({'too_many_connections'})
"""503 codes the server answers before reading the request: nothing of it was handled."""


@dataclass(frozen=True, slots=True)
class Retries:
    """How often and how long one call may try. `attempts` counts the first try (1 = no retries)."""

    attempts: int = 4
    deadline: float = 30.0
    """Seconds from the first attempt after which no new attempt starts."""
    backoff: float = 0.05
    """The first wait, in seconds; it doubles with each attempt, with jitter (a random share of up to half)."""
    max_backoff: float = 2.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before attempt number `attempt + 1` (1-based `attempt` just failed)."""
        step = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        wait = step / 2 + random.uniform(0, step / 2)
        if retry_after is not None:
            wait = max(wait, retry_after + random.uniform(0, step / 2))
        return wait


DEFAULT_RETRIES = Retries()
NO_RETRIES = Retries(attempts=1)


class Replay(Enum):
    """What may be sent again (the module docstring)."""

    SAFE = 'safe'
    """A read, or a write with an Idempotency-Key: retried on 503, connection errors and timeouts."""
    UNSENT = 'unsent'
    """A write without a key: retried only when it surely was not handled."""


def new_idempotency_key() -> str:
    """128 random bits from the OS, in hex (as a uuid4's, without building one)."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]
    """With lower-case names."""

    @property
    def etag(self) -> str | None:
        return self.headers.get('etag')

    def json(self) -> Any:
        return orjson.loads(self.body)


class Transport:
    """The connections (made on first use, in the running loop) and the rules above."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retries: Retries,
        connections: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        if not url.absolute:
            raise ValueError(f'give an absolute base URL, such as http://127.0.0.1:8080, not {base_url!r}')
        self.base_url = str(url).rstrip('/')
        self.timeout = timeout
        self.retries = retries
        self._connections = connections
        self._headers = dict(headers or {})
        if api_key is not None:
            self._headers['Authorization'] = f'Bearer {api_key}'
        self._url = url
        self._origin = str(url.origin())
        self._prefix = url.path.rstrip('/')
        self._session: aiohttp.ClientSession | None = None
        self._pool: HttpPool | None = None
        self._targets: dict[tuple[str, Any], str] = {}

    def target(self, path: str, params: Mapping[str, str | int] | None = None) -> str:
        """The request target of `path` with `params`, built once: a gateway asks for the same few on every turn."""
        key = (path, tuple(params.items()) if params else None)
        found = self._targets.get(key)
        if found is None:
            if len(self._targets) >= TARGET_CACHE_SIZE:
                self._targets.clear()
            found = self._prefix + path + ('?' + urllib.parse.urlencode(params) if params else '')
            self._targets[key] = found
        return found

    def _calls(self) -> HttpPool:
        if self._pool is None:
            self._pool = HttpPool(self._url, self._connections, self._headers)
        return self._pool

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._connections),
                cookie_jar=aiohttp.DummyCookieJar(),  # memsvc sets no cookies
                auto_decompress=False,  # and never compresses
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        replay: Replay = Replay.SAFE,
        timeout: float | None = None,  # noqa: ASYNC109  (per attempt: aiohttp's, not the whole call's)
        retries: Retries | None = None,
    ) -> Answer:
        """Send until answered with a 2xx (returned), an error that is not retried (raised), or the attempts or
        the time run out (the last error raised). `path` starts with `/`; `timeout` is per attempt."""
        policy = retries or self.retries
        started = time.monotonic()
        attempt = 0
        if body is not None:
            headers = {'Content-Type': 'application/json', **(headers or {})}
        target = self.target(path, params)
        seconds = self.timeout if timeout is None else timeout
        pool = self._calls()
        while True:
            attempt += 1
            try:
                reply = await pool.request(method, target, headers, body, seconds)
                if reply.status < 400:
                    return Answer(reply.status, reply.body, reply.headers)
                error = _error(reply.status, reply.body, reply.headers)
            except ConnectFailed as exc:  # never sent: any request may go again
                error = TransportError(str(exc))
                retryable = True
            except (ConnectionBroke, OSError, TimeoutError) as exc:
                error = TransportError(f'{method} {path}: {_describe(exc)}')
                retryable = replay is Replay.SAFE
            else:
                retryable = error.status == 503 and (replay is Replay.SAFE or error.code in EDGE_REFUSALS)
            if not retryable or attempt >= policy.attempts:
                raise error
            wait = policy.delay(attempt, error.retry_after)
            if time.monotonic() + wait - started > policy.deadline:
                raise error
            await asyncio.sleep(wait)

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, headers: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One GET whose answer is read as it comes (an event stream): error answers raise as `request` raises
        them, without retries (the caller decides); a read that waits longer than `read_timeout` raises."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=read_timeout)
        try:
            async with self._http().get(self._origin + self.target(path), headers=headers, timeout=timeout) as reply:
                if reply.status >= 400:
                    raise _error(reply.status, await reply.read(), {k.lower(): v for k, v in reply.headers.items()})
                yield reply
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f'cannot connect to {self.base_url}: {exc}') from exc

    async def upload(
        self, path: str, params: Mapping[str, str | int], chunks: AsyncIterator[bytes], content_type: str
    ) -> Answer:
        """A POST whose body streams from `chunks` (chunked transfer), on the aiohttp session; never retried (the
        chunks cannot be sent again). Error answers raise as `request` raises them."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None)
        headers = {'Content-Type': content_type}
        try:
            async with self._http().post(
                self._origin + self.target(path, params), data=chunks, headers=headers, timeout=timeout
            ) as reply:
                body = await reply.read()
                lowered = {name.lower(): value for name, value in reply.headers.items()}
                if reply.status >= 400:
                    raise _error(reply.status, body, lowered)
                return Answer(reply.status, body, lowered)
        except aiohttp.ClientError as exc:
            raise TransportError(f'POST {path}: {_describe(exc)}') from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return 'no answer in time'
    return f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__


def _error(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """`headers` with lower-case names."""
    """The exception for an error answer: our JSON error body, or (from something in front of memsvc) any other."""
    code, message = f'http_{status}', body[:200].decode(errors='replace')
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        detail = orjson.loads(body)['error']
        code, message = str(detail['code']), str(detail['message'])
    retry_after = None
    with contextlib.suppress(ValueError, TypeError):
        retry_after = float(headers.get('retry-after', ''))
    return error_for(status, code, message, headers.get('x-request-id'), retry_after)
