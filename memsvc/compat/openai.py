"""OpenAI's Conversations API under `/v1/conversations` (SPEC-2 §4): a translation layer over the manager, with
OpenAI's error shape, so that `OpenAI(base_url='http://host:port/v1', api_key=KEY)` and the Agents SDK's
`OpenAIConversationsSession` use memsvc unchanged.

A conversation is a session: its id is the session id (any session id, no prefix), so a session written through
`/api/v1/chat` is a conversation here and the other way round; `created_at` is in whole seconds. Items are
messages, one each (`compat.items`). Metadata follows OpenAI's limits here (16 keys, keys of up to 64 characters,
string values of up to 512), and the manager's as everywhere; an update replaces it whole, as OpenAI's does.

Everything else is the native API's: the tenant from the key (`Authorization: Bearer <key>`), the id checks, the
limits, `Idempotency-Key` on the POSTs that write (create and items create: a retry with the same key and body
writes nothing again; an update is idempotent by itself), `X-Request-ID` on every answer, 503 when the store is
down. Errors are `{"error": {"message", "type", "param", "code"}}` with the native status and code, but 422 is
answered as 400 (OpenAI answers a body that breaks a rule with 400 `invalid_request_error`), and a 409 carries
`x-should-retry: false` (the SDKs retry 409s, and a full session or tenant stays full).

Beyond OpenAI, which has no listing: `GET /v1/conversations` lists the tenant's conversations, newest `updated_at`
first, and `?metadata[user_id]=123` (an indexed key, `MEMSVC_INDEXED_METADATA`, as the native
`metadata.<key>=` filter) one person's, in OpenAI's list shape with `after` (a conversation id) and `limit`.

A conversation created with items is two writes, the session and then its items (a store has no single write for
both): if the second fails, a create without an `Idempotency-Key` deletes the session again; with one, the session
stays, and a retry with the same key finishes it. A crash in between leaves an empty session, listed natively.
"""

import contextlib
from typing import Annotated, Any, Literal, NotRequired

import orjson
from aiohttp import web
from pydantic import ConfigDict, Field, StringConstraints, with_config
from typing_extensions import TypedDict

from memsvc.appkeys import MANAGER, SETTINGS, TENANT
from memsvc.compat.errors import OpenAIErrorBody, openai_error
from memsvc.compat.items import ItemIds, encoded_items, to_messages
from memsvc.declare import (
    JsonBody,
    ListQuery,
    Operation,
    PathParam,
    QueryFamily,
    Reply,
    RouteTable,
    choice_query,
    int_query,
    text_query,
)
from memsvc.errors import (
    InvalidParameter,
    MemsvcError,
    MessageNotFound,
    PreconditionFailed,
    ResponseTooLarge,
    SessionNotFound,
)
from memsvc.manager import AsyncMemoryManager, encode_cursor
from memsvc.models import (
    SESSION_ID_PATTERN,
    JsonObject,
    NewMessage,
    NewSession,
    SessionRecord,
    is_session_id,
    json_array,
    require_session_id,
    to_micros,
)
from memsvc.routes import IDEMPOTENCY_KEY
from memsvc.settings import MIN_RESPONSE_BYTES
from memsvc.stores.base import ANY_VERSION, MessageRange

V1 = '/v1'
CONVERSATIONS = V1 + '/conversations'
CONVERSATION = CONVERSATIONS + '/{conversation_id:[^/]+}'
ITEMS = CONVERSATION + '/items'
ITEM = ITEMS + '/{item_id:[^/]+}'
MAX_ITEMS = 20
ITEM_OVERHEAD_BYTES = 256
"""An upper bound of what an item's answer holds beyond its stored message's bytes (its type, status, part)."""


class ItemNotFound(MessageNotFound):
    """The conversation exists and has no item with this id (404, as `MessageNotFound` in the one error map)."""

    code = 'item_not_found'

    def __init__(self, session_id: str, item_id: str) -> None:
        MemsvcError.__init__(self, f'conversation {session_id!r} has no item {item_id!r}')


conversations = RouteTable(error_body=OpenAIErrorBody, envelope=openai_error, prefix=V1)


# --- bodies and answers ----------------------------------------------------------------------------------------

OpenAIMetadata = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]],
    Field(max_length=16, description='at most 16 keys of up to 64 characters, string values of up to 512'),
]
InputItem = Annotated[
    JsonObject,
    Field(
        description='a `message` (or any object with a `role`), `function_call`, `function_call_output`, or any '
        'other item type (kept as sent)'
    ),
]


@with_config(ConfigDict(extra='forbid'))
class NewConversation(TypedDict):
    items: NotRequired[Annotated[list[InputItem], Field(max_length=MAX_ITEMS)] | None]
    metadata: NotRequired[OpenAIMetadata | None]


@with_config(ConfigDict(extra='forbid'))
class ConversationUpdate(TypedDict):
    metadata: Annotated[OpenAIMetadata | None, Field(description='replaces the metadata; null empties it')]


@with_config(ConfigDict(extra='forbid'))
class NewItems(TypedDict):
    items: Annotated[list[InputItem], Field(min_length=1, max_length=MAX_ITEMS)]


@with_config(ConfigDict(extra='forbid'))
class Conversation(TypedDict):
    id: str
    object: Literal['conversation']
    created_at: Annotated[int, Field(description='unix seconds')]
    metadata: JsonObject


@with_config(ConfigDict(extra='forbid'))
class ConversationDeleted(TypedDict):
    id: str
    object: Literal['conversation.deleted']
    deleted: Literal[True]


@with_config(ConfigDict(extra='forbid'))
class ConversationList(TypedDict):
    """A page of conversations, newest `updated_at` first (beyond OpenAI, which has no listing)."""

    object: Literal['list']
    data: list[Conversation]
    first_id: str | None
    last_id: str | None
    has_more: bool


@with_config(ConfigDict(extra='allow', title='ConversationItem'))
class Item(TypedDict):
    """A `message` (`role`, `content` as parts), `function_call` (`call_id`, `name`, `arguments`),
    `function_call_output` (`call_id`, `output`) or an item of another type as it was sent."""

    id: str
    type: str


@with_config(ConfigDict(extra='forbid'))
class ConversationItemList(TypedDict):
    object: Literal['list']
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type='application/json')


def _conversation(record: SessionRecord) -> dict[str, Any]:
    return {
        'id': record.id,
        'object': 'conversation',
        'created_at': int(record.created_at.timestamp()),
        'metadata': orjson.Fragment(record.metadata),
    }


def _item_list(messages: list[dict[str, Any]], ids: ItemIds, has_more: bool) -> web.Response:
    """The list answer of these stored messages' items."""
    if messages:
        prefix = ids.encoded_prefix
        bounds = b'"first_id":"%s%d","last_id":"%s%d"' % (prefix, messages[0]['id'], prefix, messages[-1]['id'])
    else:
        bounds = b'"first_id":null,"last_id":null'
    items = b','.join(encoded_items(messages, ids))
    body = b'{"object":"list","data":[%s],%s,"has_more":%s}' % (items, bounds, b'true' if has_more else b'false')
    return web.Response(body=body, content_type='application/json')


async def _append(
    manager: AsyncMemoryManager, tenant: str, session_id: str, messages: list[NewMessage], key: str | None
) -> list[bytes]:
    """Append to an existing session only: `If-Match: *` in the store's own atomic step, its 412 a 404 here."""
    try:
        appended = await manager.add_messages(
            tenant, session_id, messages, batch=True, expected_version=ANY_VERSION, idempotency_key=key
        )
    except PreconditionFailed:
        raise SessionNotFound(session_id) from None
    return appended.messages


# --- conversations ---------------------------------------------------------------------------------------------

CONVERSATION_ID = PathParam(
    'conversation_id', SESSION_ID_PATTERN, require_session_id, description='the conversation (session) id'
)
NEW_CONVERSATION: JsonBody[NewConversation] = JsonBody(NewConversation, required=False)
CONVERSATION_UPDATE: JsonBody[ConversationUpdate] = JsonBody(ConversationUpdate)
NEW_ITEMS: JsonBody[NewItems] = JsonBody(NewItems)
_CONVERSATION = {200: Reply(Conversation, 'the conversation')}


@conversations.post(
    CONVERSATIONS,
    Operation(
        'createConversation',
        'Create a conversation, with metadata and up to 20 items',
        _CONVERSATION,
        errors=(400, 401, 404, 409, 413, 415),
        params=(IDEMPOTENCY_KEY,),
        body=(NEW_CONVERSATION,),
    ),
)
async def create_conversation(request: web.Request) -> web.Response:
    raw = await NEW_CONVERSATION.read(request)
    body: NewConversation = {} if raw is None else NEW_CONVERSATION.parse(raw)
    messages = to_messages(body.get('items') or [])  # every item checked before anything is written
    key = IDEMPOTENCY_KEY.get(request)
    manager, tenant = request.app[MANAGER], request[TENANT]
    created = await manager.create_session(tenant, NewSession(metadata=body.get('metadata') or {}), idempotency_key=key)
    session_id = created.record.id
    if messages:
        try:
            await _append(manager, tenant, session_id, messages, None if key is None else f'{key} items')
        except MemsvcError:
            if key is None:  # nobody knows this id yet: take the half-made conversation back
                with contextlib.suppress(MemsvcError):
                    await manager.delete_session(tenant, session_id)
            raise
    return _json(_conversation(created.record))


CONVERSATIONS_LIMIT = int_query('limit', 1, 100, default=20, description='page size')
CONVERSATIONS_AFTER = text_query(
    'after',
    schema={'type': 'string', 'pattern': SESSION_ID_PATTERN},
    description='only conversations after this one, newest first (the last_id of the previous page)',
)  # checked in the handler
METADATA_FILTER = QueryFamily(
    'metadata[',
    lambda settings: settings.indexed_keys(),
    suffix=']',
    schema={'type': 'string'},
    description='only the conversations whose metadata has this string under `{key}` (an indexed key, '
    'MEMSVC_INDEXED_METADATA); several filters: all of them',
)


@conversations.get(
    CONVERSATIONS,
    Operation(
        'listConversations',
        "A page of the tenant's conversations, newest first, or those of one person by metadata (beyond OpenAI)",
        {200: Reply(ConversationList, 'a page of conversations')},
        errors=(400, 401),
        params=(METADATA_FILTER, CONVERSATIONS_AFTER, CONVERSATIONS_LIMIT),
        description='OpenAI has no listing of conversations; this one is the native listing (`GET '
        "/api/v1/chat/sessions`) in the shape of OpenAI's lists. `metadata[<key>]=<value>` lists only the "
        'conversations whose metadata holds that string under an indexed key (MEMSVC_INDEXED_METADATA, default '
        '`user_id`; another key is 400 naming the indexed ones); without a filter, every conversation of the tenant. '
        'Newest `updated_at` first; `has_more` says whether more follow, `after=<last_id>` asks for them. A '
        'conversation written while a client pages moves to the front: a page after it then starts from its new '
        'place, so conversations may be listed again, never left out. `after` naming no conversation is 400.',
    ),
)
async def list_conversations(request: web.Request) -> web.Response:
    manager, tenant = request.app[MANAGER], request[TENANT]
    filters = METADATA_FILTER.get(request, request.app[SETTINGS].indexed_keys())
    limit, after = CONVERSATIONS_LIMIT.get(request), CONVERSATIONS_AFTER.get(request)
    cursor = None
    if after is not None:
        if not is_session_id(after):
            raise InvalidParameter('after', 'give the last_id of the previous page')
        try:
            found = await manager.get_session(tenant, after, with_messages=False)
        except SessionNotFound:
            raise InvalidParameter('after', f'no conversation {after!r}; start again without after') from None
        cursor = encode_cursor((to_micros(found.record.updated_at), found.record.id))
    sessions, next_cursor = await manager.list_sessions(
        tenant, limit=limit, cursor=cursor, with_messages=False, filters=filters
    )
    data = [_conversation(session.record) for session in sessions]
    return _json(
        {
            'object': 'list',
            'data': data,
            'first_id': data[0]['id'] if data else None,
            'last_id': data[-1]['id'] if data else None,
            'has_more': next_cursor is not None,
        }
    )


@conversations.get(
    CONVERSATION,
    Operation('getConversation', 'A conversation', _CONVERSATION, errors=(400, 401, 404), params=(CONVERSATION_ID,)),
)
async def get_conversation(request: web.Request) -> web.Response:
    session_id = CONVERSATION_ID.get(request)
    found = await request.app[MANAGER].get_session(request[TENANT], session_id, with_messages=False)
    return _json(_conversation(found.record))


@conversations.post(
    CONVERSATION,
    Operation(
        'updateConversation',
        "Replace a conversation's metadata",
        _CONVERSATION,
        errors=(400, 401, 404, 413, 415),
        params=(CONVERSATION_ID,),
        body=(CONVERSATION_UPDATE,),
    ),
)
async def update_conversation(request: web.Request) -> web.Response:
    session_id = CONVERSATION_ID.get(request)
    raw = await CONVERSATION_UPDATE.read(request)
    assert raw is not None
    body = CONVERSATION_UPDATE.parse(raw)
    record = await request.app[MANAGER].replace_metadata(request[TENANT], session_id, body['metadata'] or {})
    return _json(_conversation(record))


@conversations.delete(
    CONVERSATION,
    Operation(
        'deleteConversation',
        'Delete a conversation and its items',
        {200: Reply(ConversationDeleted, 'deleted')},
        errors=(400, 401, 404),
        params=(CONVERSATION_ID,),
    ),
)
async def delete_conversation(request: web.Request) -> web.Response:
    session_id = CONVERSATION_ID.get(request)
    await request.app[MANAGER].delete_session(request[TENANT], session_id)
    return _json({'id': session_id, 'object': 'conversation.deleted', 'deleted': True})


# --- items -----------------------------------------------------------------------------------------------------

ITEM_ID = PathParam(
    'item_id', r'^msg_[0-9a-f]{8}[1-9][0-9]{0,15}$', str, description='an item id this conversation answered'
)  # an id of another shape names no item: 404
INCLUDE = ListQuery('include', description='accepted, and changes nothing: memsvc keeps no such outputs')
ITEMS_LIMIT = int_query('limit', 1, 100, default=20, description='page size')
ORDER = choice_query('order', ('asc', 'desc'), default='desc', description='oldest first (asc) or newest first')
AFTER = text_query(
    'after',
    schema={'type': 'string', 'pattern': r'^msg_[0-9a-f]{8}[1-9][0-9]{0,15}$'},
    description="only items after this item id, in this page's order (last_id of the previous page)",
)  # checked against the conversation's ids in the handler
_ITEMS = {200: Reply(ConversationItemList, 'the items')}


@conversations.post(
    ITEMS,
    Operation(
        'createConversationItems',
        'Add up to 20 items to a conversation, in order',
        _ITEMS,
        errors=(400, 401, 404, 409, 413, 415),
        params=(CONVERSATION_ID, INCLUDE, IDEMPOTENCY_KEY),
        body=(NEW_ITEMS,),
    ),
)
async def create_items(request: web.Request) -> web.Response:
    session_id = CONVERSATION_ID.get(request)
    INCLUDE.get(request)
    raw = await NEW_ITEMS.read(request)
    assert raw is not None
    messages = to_messages(NEW_ITEMS.parse(raw)['items'])
    key = IDEMPOTENCY_KEY.get(request)
    stored = await _append(request.app[MANAGER], request[TENANT], session_id, messages, key)
    return _item_list(orjson.loads(json_array(stored)), ItemIds(session_id), False)


@conversations.get(
    ITEMS,
    Operation(
        'listConversationItems',
        "A page of a conversation's items",
        _ITEMS,
        errors=(400, 401, 404),
        params=(CONVERSATION_ID, AFTER, ITEMS_LIMIT, ORDER, INCLUDE),
        description='`has_more` says whether items follow this page; ask for them with `after=<last_id>`.',
    ),
)
async def list_items(request: web.Request) -> web.Response:
    session_id = CONVERSATION_ID.get(request)
    limit, order, after = ITEMS_LIMIT.get(request), ORDER.get(request), AFTER.get(request)
    INCLUDE.get(request)
    ids = ItemIds(session_id)
    cursor = None if after is None else ids.cursor(after)
    # one more than the page, to tell whether more follow; the store answers oldest first either way
    if order == 'desc':
        selection = MessageRange(limit=limit + 1, before=cursor)
    else:
        selection = MessageRange(limit=limit + 1, after=cursor or 0)
    raw = await request.app[MANAGER].get_messages(request[TENANT], session_id, selection)
    if (
        len(raw) > MIN_RESPONSE_BYTES
        and len(raw) + ITEM_OVERHEAD_BYTES * limit > request.app[SETTINGS].max_response_bytes
    ):
        raise ResponseTooLarge(request.app[SETTINGS].max_response_bytes, 'ask for fewer items with limit')
    messages = orjson.loads(raw)
    if order == 'desc':
        messages.reverse()
    has_more = len(messages) > limit
    if has_more:
        del messages[limit:]
    return _item_list(messages, ids, has_more)


@conversations.get(
    ITEM,
    Operation(
        'getConversationItem',
        'One item of a conversation',
        {200: Reply(Item, 'the item')},
        errors=(400, 401, 404),
        params=(CONVERSATION_ID, ITEM_ID, INCLUDE),
    ),
)
async def get_item(request: web.Request) -> web.Response:
    session_id, item_id = CONVERSATION_ID.get(request), ITEM_ID.get(request)
    INCLUDE.get(request)
    ids = ItemIds(session_id)
    message = await _message(request.app[MANAGER], request[TENANT], session_id, ids, item_id)
    return web.Response(body=encoded_items([orjson.loads(message)], ids)[0], content_type='application/json')


@conversations.delete(
    ITEM,
    Operation(
        'deleteConversationItem',
        'Delete one item of a conversation; answers the conversation',
        _CONVERSATION,
        errors=(400, 401, 404),
        params=(CONVERSATION_ID, ITEM_ID),
    ),
)
async def delete_item(request: web.Request) -> web.Response:
    session_id, item_id = CONVERSATION_ID.get(request), ITEM_ID.get(request)
    manager, tenant = request.app[MANAGER], request[TENANT]
    message_id = ItemIds(session_id).message_id(item_id)
    try:
        if message_id is None:
            raise MessageNotFound(session_id, 0)
        await manager.delete_message(tenant, session_id, message_id)
    except MessageNotFound:
        await manager.get_session(tenant, session_id, with_messages=False)  # an unknown conversation is 404 too
        raise ItemNotFound(session_id, item_id) from None
    found = await manager.get_session(tenant, session_id, with_messages=False)
    return _json(_conversation(found.record))


async def _message(manager: AsyncMemoryManager, tenant: str, session_id: str, ids: ItemIds, item_id: str) -> bytes:
    """The stored message an item id names: a direct read of its message id."""
    message_id = ids.message_id(item_id)
    try:
        if message_id is None:
            raise MessageNotFound(session_id, 0)
        return await manager.get_message(tenant, session_id, message_id)
    except MessageNotFound:
        await manager.get_session(tenant, session_id, with_messages=False)  # an unknown conversation is 404 too
        raise ItemNotFound(session_id, item_id) from None
