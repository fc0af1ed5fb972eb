"""Export and import: a tenant's sessions as NDJSON, out and in (README, "Export and import")."""

import logging

from aiohttp import web

from memsvc.appkeys import MANAGER, SETTINGS, TENANT
from memsvc.declare import LinesBody, Operation, Reply, choice_query
from memsvc.models import ImportResult, SessionLine
from memsvc.routes.common import API, json_response, routes
from memsvc.routes.sessions import METADATA

log = logging.getLogger('memsvc')

NDJSON = 'application/x-ndjson'
ON_CONFLICT = choice_query(
    'on_conflict',
    ('keep', 'replace'),
    default='keep',
    description='a session that exists and differs from its line: kept as it is (a conflict), or replaced by it',
)
LINES = LinesBody(SessionLine)


@routes.get(
    f'{API}/export',
    Operation(
        'exportSessions',
        "The tenant's sessions as NDJSON, one line per session",
        {200: Reply(SessionLine, 'one line per session, newest updated_at first', media_type=NDJSON)},
        errors=(400, 401),
        params=(METADATA,),
        description='Each line is one session as it was at one moment: its fields and every message as stored, '
        '`messages` last. Streamed in bounded memory: sessions created after the export began are not in it. A '
        'failure once the answer has begun closes the connection before the end of the chunked body, so that a '
        'client never takes a cut answer for a whole one. `metadata.<key>=<value>` (as the listing takes it: an '
        'indexed key, several = all of them; another key is 400 `invalid_parameter`) exports only the sessions the '
        "filtered listing finds, e.g. one person's.",
    ),
)
async def export_sessions(request: web.Request) -> web.StreamResponse:
    filters = METADATA.get(request, request.app[SETTINGS].indexed_keys())
    pieces = request.app[MANAGER].export(request[TENANT], filters)
    try:
        piece = await anext(pieces, None)  # the store answers before anything is sent: a failure is still a JSON 503
        response = web.StreamResponse(headers={'Content-Type': NDJSON})
        await response.prepare(request)
        try:
            while piece is not None:
                await response.write(piece)
                piece = await anext(pieces, None)
        except Exception:
            log.exception('the export failed after its answer had begun; the connection is closed')
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        await pieces.aclose()


@routes.post(
    f'{API}/import',
    Operation(
        'importSessions',
        'Import sessions from NDJSON, as the export writes them, each all or nothing',
        {200: Reply(ImportResult, 'what became of each line')},
        errors=(400, 401, 415),
        params=(ON_CONFLICT,),
        body=(LINES,),
        description='One session a line, checked with the rules and limits of the API; ids, timestamps, created_at, '
        'updated_at and the next message id kept. A session that exists identically is skipped; one that differs '
        'is a conflict left as it is (`on_conflict=replace`: replaced). A line that breaks a rule is reported in '
        '`errors` by its number and nothing of it is written. No bound on the body; each line at most what the '
        "server's limits let one session hold (MEMSVC_MAX_IMPORT_LINE_BYTES). A 503 stops the import: the lines "
        'before it are imported, and importing the same body again skips them.',
    ),
)
async def import_sessions(request: web.Request) -> web.Response:
    replace = ON_CONFLICT.get(request) == 'replace'
    lines = LINES.reader(request, request.app[SETTINGS].import_line_bytes())
    result = await request.app[MANAGER].import_lines(request[TENANT], lines, replace=replace)
    return json_response(result)
