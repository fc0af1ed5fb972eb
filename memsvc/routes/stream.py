"""A session's changes as Server-Sent Events."""

import re

from aiohttp import web

from memsvc.appkeys import HUB, MANAGER, SETTINGS, TENANT
from memsvc.context import message_id
from memsvc.declare import Header, Operation, Reply, int_query
from memsvc.errors import InvalidHeader
from memsvc.routes.common import MAX_ID, SESSION, SESSION_ID, routes
from memsvc.sse import EventStream
from memsvc.stores.base import MessageRange


def _last_event_id(match: 're.Match[str]') -> int:
    value = int(match.group(0))
    if value > MAX_ID:
        raise InvalidHeader('Last-Event-ID', LAST_EVENT_PROBLEM)
    return value


LAST_EVENT_PROBLEM = f'the id of a message: an integer from 0 to {MAX_ID}'
LAST_EVENT_ID = Header(
    'Last-Event-ID',
    r'[0-9]{1,16}',
    _last_event_id,
    description='resume after this message id (EventSource sends it when it reconnects); wins over `after`',
    problem=LAST_EVENT_PROBLEM,
    strip=True,
)
EVENTS_AFTER = int_query('after', 0, MAX_ID, description='resume after this message id (as Last-Event-ID)')


@routes.get(
    f'{SESSION}/events',
    Operation(
        'streamEvents',
        "The session's changes as Server-Sent Events",
        {200: Reply(None, 'the event stream', media_type='text/event-stream')},
        errors=(400, 401, 404, 503),
        params=(SESSION_ID, LAST_EVENT_ID, EVENTS_AFTER),
        description='`event: message` with `id: <message id>` and `data:` the message as stored (what GET '
        '…/messages answers for it), one line of JSON; `event: message_deleted` (`{"id"}`), `truncated` '
        '(`{"after"}`), `cleared` and `deleted` (`{}`; the stream ends after it). With `Last-Event-ID` (or '
        '`after`), the messages after that id come first; with neither, the stream starts with the next new '
        'message. A comment line after MEMSVC_STREAM_KEEPALIVE_SECONDS without an event. Writes through any '
        'replica of the same Redis reach the stream. 404 before the stream starts for an unknown session; 503 '
        '`too_many_streams` past MEMSVC_MAX_STREAMS open streams in this process.',
    ),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    session_id = SESSION_ID.get(request)
    resumed = LAST_EVENT_ID.get(request)
    after = EVENTS_AFTER.get(request)
    if resumed is not None:
        after = resumed
    app, tenant = request.app, request[TENANT]
    manager, hub = app[MANAGER], app[HUB]
    async with hub.listen(tenant, session_id, stream=True) as listener:
        if after is None:  # from the next new message: after the newest one stored now
            newest = await manager.read_messages(tenant, session_id, MessageRange(limit=1))
            after, first = (message_id(newest[-1]) if newest else 0), []
        else:
            first = await manager.read_messages(tenant, session_id, MessageRange(limit=500, after=after))
        stream = EventStream(request, manager, hub, listener, after, app[SETTINGS].stream_keepalive_seconds)
        return await stream.run(first)
