"""The context window a model can take, and the summary slot."""

from aiohttp import web

from memsvc.appkeys import MANAGER, TENANT
from memsvc.declare import JsonBody, Operation, Reply, choice_query, int_query
from memsvc.models import ContextWindowBody, NewSummary, Success, SummaryBody
from memsvc.render import FORMATS
from memsvc.routes.common import ETAG, IDEMPOTENCY_KEY, IF_MATCH, SESSION, SESSION_ID, SUCCESS, bounded, etag, routes
from memsvc.settings import MIN_RESPONSE_BYTES
from memsvc.tokens import DEFAULT_ENCODING, ENCODINGS

MAX_TOKENS = int_query('max_tokens', 1, 2_000_000, description='the token budget; without it, no budget')


FORMAT = choice_query(
    'format', FORMATS, default='openai', description="the shape of the messages: a provider's request, or as stored"
)
ENCODING = choice_query(
    'encoding', ENCODINGS, default=DEFAULT_ENCODING, description='the tokenizer the budget and `tokens` count with'
)
NEW_SUMMARY: JsonBody[NewSummary] = JsonBody(NewSummary)


@routes.get(
    f'{SESSION}/context',
    Operation(
        'getContext',
        "The newest history that fits a token budget, in a provider's request shape",
        {200: Reply(ContextWindowBody, 'the window')},
        errors=(400, 401, 404, 422),
        params=(SESSION_ID, MAX_TOKENS, FORMAT, ENCODING),
        description='The leading system/developer messages always, then the summary, then the newest messages '
        'that fit, an assistant message with tool calls and its tool results kept or dropped together. '
        '422 `context_budget_too_small` when the leading messages and the summary alone exceed `max_tokens`.',
    ),
)
async def get_context(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    max_tokens, format, encoding = MAX_TOKENS.get(request), FORMAT.get(request), ENCODING.get(request)
    window = await request.app[MANAGER].context(
        request[TENANT], session_id, max_tokens=max_tokens, format=format, encoding=encoding
    )
    body = window if isinstance(window, bytes) else window.to_json()
    if len(body) > MIN_RESPONSE_BYTES:
        bounded(request, len(body), 'give max_tokens (or a smaller one)')
    return web.Response(body=body, content_type='application/json')


@routes.put(
    f'{SESSION}/summary',
    Operation(
        'setSummary',
        'Set the summary of the messages up to through_id (replacing any); the context window uses it',
        {200: Reply(SummaryBody, 'the summary as stored', (ETAG,))},
        errors=(400, 401, 404, 412, 413, 415, 422),
        params=(SESSION_ID, IF_MATCH, IDEMPOTENCY_KEY),
        body=(NEW_SUMMARY,),
        description='422 `through_id_not_stored` when no stored message has the id `through_id`.',
    ),
)
async def set_summary(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    raw = await NEW_SUMMARY.read(request)
    assert raw is not None
    body = NEW_SUMMARY.parse(raw)
    written = await request.app[MANAGER].set_summary(
        request[TENANT],
        session_id,
        body.content,
        body.through_id,
        expected_version=IF_MATCH.get(request),
        idempotency_key=IDEMPOTENCY_KEY.get(request),
    )
    return web.Response(body=written.summary, content_type='application/json', headers=etag(written.version))


@routes.get(
    f'{SESSION}/summary',
    Operation(
        'getSummary',
        'The summary',
        {200: Reply(SummaryBody, 'the summary')},
        errors=(400, 401, 404),
        params=(SESSION_ID,),
        description='404 `summary_not_found` when the session has none.',
    ),
)
async def get_summary(request: web.Request) -> web.Response:
    summary = await request.app[MANAGER].get_summary(request[TENANT], SESSION_ID.get(request))
    return web.Response(body=summary, content_type='application/json')


@routes.delete(
    f'{SESSION}/summary',
    Operation(
        'deleteSummary',
        'Remove the summary; the messages stay',
        {200: Reply(Success, 'removed', (ETAG,))},
        errors=(400, 401, 404, 412, 422),
        params=(SESSION_ID, IF_MATCH, IDEMPOTENCY_KEY),
        description='404 `summary_not_found` when the session has none.',
    ),
)
async def delete_summary(request: web.Request) -> web.Response:
    session_id = SESSION_ID.get(request)
    version = await request.app[MANAGER].delete_summary(
        request[TENANT],
        session_id,
        expected_version=IF_MATCH.get(request),
        idempotency_key=IDEMPOTENCY_KEY.get(request),
    )
    return web.Response(body=SUCCESS, content_type='application/json', headers=etag(version))
