"""OpenAI conversation items <-> memsvc messages: one item is exactly one message, both ways (SPEC-2 §4).

Writing (`to_message`), by the item's `type` (an item without one but with a `role` is a `message`):

- `message` (role user, assistant, system or developer): a message of that role whose content is the item's
  text: the string sent, or its `input_text` / `output_text` parts joined (with nothing between them);
- `function_call`: an assistant message with empty content and one tool call in OpenAI's Chat Completions shape,
  `{"id": call_id, "type": "function", "function": {"name", "arguments"}}`;
- `function_call_output`: a `tool` message, `tool_call_id` the item's `call_id` and content its output (a string,
  or the text of its `input_text` parts);
- any other type: an assistant message with empty content.

An item is *plain* when it can be read back from its message alone: a `message` whose content is a string or one
text part of its role's kind (`input_text` for user/system/developer, `output_text` for assistant, with no
annotations or logprobs), a `function_call` with a string `arguments`, a `function_call_output` with a string
`output`, none with fields beyond those (`id` is ignored; `status` may be `completed`). Any other item is kept
verbatim, as sent without its `id`, in the message's metadata under `ITEM_KEY`, and answered from there: other
item types, several parts, images and files, `phase`, annotations... (within `MEMSVC_MAX_METADATA_BYTES`).

Reading (`to_item`): a message with a verbatim item answers that item; otherwise a `tool` message is a
`function_call_output`, an assistant message with exactly one tool call and no text a `function_call`, anything
else a `message` with one text part of its role's kind (a stored message's other tool calls, `name` and metadata
have no place in an item). Every item answers `id` and `status: "completed"` (`status` unless it was sent).

Item ids (`ItemIds`) are `msg_` + 8 hex digits of the session id's CRC-32 + the message id in decimal: stable
(message ids are never reused), a direct store read (the message id is in it), and an id from another conversation
names no message of this one (a scope, not a secret: the tenant's key guards the conversation).

Reads are the hot path (the Agents SDK lists items on every turn): `encoded_items` writes the item of a bare message
with one bytes format, and decodes only the others into `to_item`.
"""

import re
import zlib
from typing import Any, Final

import orjson

from memsvc.errors import InvalidInput, InvalidParameter
from memsvc.models import NewMessage

ITEM_KEY: Final = 'openai_item'
"""The key of a message's metadata that holds an item kept verbatim."""
MESSAGE_ROLES: Final = ('user', 'assistant', 'system', 'developer')
TEXT_PARTS: Final = frozenset({'input_text', 'output_text'})
_STATUS_DEFAULT: Final = 'completed'
_STATUS_TYPES: Final = frozenset({'message', 'function_call', 'function_call_output'})
"""The item types whose answers always carry a `status` (the SDK's types require one)."""
_PLAIN_FIELDS: Final = {
    'message': frozenset({'type', 'id', 'status', 'role', 'content'}),
    'function_call': frozenset({'type', 'id', 'status', 'call_id', 'name', 'arguments'}),
    'function_call_output': frozenset({'type', 'id', 'status', 'call_id', 'output'}),
}
_PLAIN_PART_FIELDS: Final = frozenset({'type', 'text', 'annotations', 'logprobs'})
MAX_CALL_ID: Final = 256  # a native tool_call_id's bound (models.ShortText)
_ITEM_ID = re.compile(r'msg_([0-9a-f]{8})([1-9][0-9]{0,15})')


def part_kind(role: str) -> str:
    return 'output_text' if role == 'assistant' else 'input_text'


class ItemIds:
    """The item ids of one conversation."""

    __slots__ = ('encoded_prefix', 'prefix', 'tag')

    def __init__(self, session_id: str) -> None:
        self.tag = f'{zlib.crc32(session_id.encode()):08x}'
        self.prefix = 'msg_' + self.tag
        self.encoded_prefix = self.prefix.encode()

    def item_id(self, message_id: int) -> str:
        return f'{self.prefix}{message_id}'

    def message_id(self, item_id: str) -> int | None:
        """The message id an item id of this conversation names; None for any other string."""
        match = _ITEM_ID.fullmatch(item_id)
        if match is None or match.group(1) != self.tag:
            return None
        return int(match.group(2))

    def cursor(self, item_id: str) -> int:
        """`after`'s message id: 400 for a string that is not an item id of this conversation."""
        found = self.message_id(item_id)
        if found is None:
            raise InvalidParameter('after', 'not the id of an item of this conversation')
        return found


# --- writing ---------------------------------------------------------------------------------------------------


def to_messages(items: list[dict[str, Any]]) -> list[NewMessage]:
    return [to_message(item, index) for index, item in enumerate(items)]


def to_message(item: dict[str, Any], index: int) -> NewMessage:
    """The message that stores `item`, the `index`-th of the request (named in errors as `items[index]`)."""
    where = f'items[{index}]'
    kind = item.get('type')
    if kind is None and 'role' in item:
        kind = 'message'
    if not isinstance(kind, str):
        raise InvalidInput(f'{where}.type', 'give the item type as a string (or a role, for a message)')
    plain = _PLAIN_FIELDS.get(kind, frozenset()).issuperset(item) and item.get('status', _STATUS_DEFAULT) == 'completed'
    message: NewMessage
    if kind == 'message':
        role = item.get('role')
        if role not in MESSAGE_ROLES:
            raise InvalidInput(f'{where}.role', f'must be one of {", ".join(MESSAGE_ROLES)}')
        text, one_part = _text(item.get('content'), f'{where}.content', part_kind(role))
        message = {'role': role, 'content': text}
        plain = plain and one_part
    elif kind == 'function_call':
        call_id = _call_id(item, where)
        name, arguments = item.get('name'), item.get('arguments')
        if not isinstance(name, str) or not name:
            raise InvalidInput(f'{where}.name', 'give the function name as a string')
        if not isinstance(arguments, str):
            raise InvalidInput(f'{where}.arguments', 'give the arguments as a string (of JSON)')
        call = {'id': call_id, 'type': 'function', 'function': {'name': name, 'arguments': arguments}}
        message = {'role': 'assistant', 'content': '', 'tool_calls': [call]}
    elif kind == 'function_call_output':
        call_id = _call_id(item, where)
        output = item.get('output')
        if isinstance(output, str):
            message = {'role': 'tool', 'content': output, 'tool_call_id': call_id}
        else:
            text, _ = _text(output, f'{where}.output', 'input_text')
            message = {'role': 'tool', 'content': text, 'tool_call_id': call_id}
            plain = False
    else:
        message = {'role': 'assistant', 'content': ''}
    if not plain:
        message['metadata'] = {ITEM_KEY: {key: value for key, value in item.items() if key != 'id'}}
    return message


def _call_id(item: dict[str, Any], where: str) -> str:
    call_id = item.get('call_id')
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= MAX_CALL_ID:
        raise InvalidInput(f'{where}.call_id', f'give the call id as a string of 1 to {MAX_CALL_ID} characters')
    return call_id


def _text(content: Any, where: str, kind: str) -> tuple[str, bool]:
    """The text of a message's content (a string, or a list of parts) and whether it is one plain part of `kind`
    (or a string): what the message alone can answer again."""
    if isinstance(content, str):
        return content, True
    if not isinstance(content, list):
        raise InvalidInput(where, 'give a string or a list of content parts')
    texts = []
    for number, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get('type'), str):
            raise InvalidInput(f'{where}[{number}]', 'a content part is an object with a type')
        if part['type'] in TEXT_PARTS:
            if not isinstance(part.get('text'), str):
                raise InvalidInput(f'{where}[{number}].text', 'give the text as a string')
            texts.append(part['text'])
    if len(content) != 1:
        return ''.join(texts), False
    part = content[0]
    plain = (
        part['type'] == kind
        and _PLAIN_PART_FIELDS.issuperset(part)
        and not part.get('annotations')
        and not part.get('logprobs')
    )
    return ''.join(texts), plain


# --- reading ---------------------------------------------------------------------------------------------------


def to_item(message: dict[str, Any], ids: ItemIds) -> dict[str, Any]:
    """The item a stored message answers as (see the module's docstring)."""
    item_id = ids.item_id(message['id'])
    metadata = message.get('metadata')
    kept = metadata.get(ITEM_KEY) if isinstance(metadata, dict) else None
    if isinstance(kept, dict) and isinstance(kept.get('type', 'message' if 'role' in kept else None), str):
        item = {'id': item_id, **kept}
        item.setdefault('type', 'message')
        if item['type'] in _STATUS_TYPES:
            item.setdefault('status', _STATUS_DEFAULT)
        return item
    role, content = message['role'], message['content']
    if role == 'tool':
        item = {'id': item_id, 'type': 'function_call_output', 'status': _STATUS_DEFAULT, 'output': content}
        if 'tool_call_id' in message:
            item['call_id'] = message['tool_call_id']
        return item
    calls = message.get('tool_calls')
    if role == 'assistant' and not content and isinstance(calls, list) and len(calls) == 1:
        function = calls[0].get('function') if isinstance(calls[0], dict) else None
        if isinstance(function, dict):
            return {
                'id': item_id,
                'type': 'function_call',
                'status': _STATUS_DEFAULT,
                'call_id': str(calls[0].get('id', '')),
                'name': str(function.get('name', '')),
                'arguments': str(function.get('arguments', '')),
            }
    if role == 'assistant':
        part: dict[str, Any] = {'type': 'output_text', 'text': content, 'annotations': []}
    else:
        part = {'type': 'input_text', 'text': content}
    return {'id': item_id, 'type': 'message', 'status': _STATUS_DEFAULT, 'role': role, 'content': [part]}


_HEADS: Final = {
    role.encode(): b'","type":"message","status":"completed","role":"%s","content":[{"type":"%s","text":'
    % (role.encode(), part_kind(role).encode())
    for role in MESSAGE_ROLES
}
_TAILS: Final = {role.encode(): b',"annotations":[]}]}' if role == 'assistant' else b'}]}' for role in MESSAGE_ROLES}
_ROLES: Final = {role: role.encode() for role in MESSAGE_ROLES}
_BARE_KEYS: Final = 4  # id, role, content, timestamp


def encoded_items(messages: list[dict[str, Any]], ids: ItemIds) -> list[bytes]:
    """`to_item` of each message, as JSON: a bare one (`context.BARE`: id, role, content and timestamp only, as every
    plain `message` item is stored) written in one expression, without a call or a dict (the list read answers up
    to 100 of them, and its cost is Python's per item)."""
    prefix, roles, dumps = ids.encoded_prefix, _ROLES, orjson.dumps
    return [
        b'{"id":"%s%d%s%s%s' % (prefix, message['id'], _HEADS[role], dumps(message['content']), _TAILS[role])
        if len(message) == _BARE_KEYS and (role := roles.get(message['role'])) is not None
        else dumps(to_item(message, ids))
        for message in messages
    ]
