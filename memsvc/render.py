"""A fitted context window in the shape a provider's request takes (SPEC-2 §1, "Rendering").

- `openai`: Chat Completions `messages`, `{"role", "content", "name"?, "tool_calls"?, "tool_call_id"?}`;
  tool calls in OpenAI's shape `{"id", "type": "function", "function": {"name", "arguments"}}`.
- `responses`: Responses API input items: `{"type": "message", "role", "content"}` per message (an assistant
  message that only calls tools has none), `{"type": "function_call", "call_id", "name", "arguments"}` per
  tool call, `{"type": "function_call_output", "call_id", "output"}` per tool message.
- `anthropic`: Messages API `system` (every system/developer text and the summary, joined by a blank line)
  and `messages` of content blocks: `text`, `tool_use` (`input` parsed from `arguments`; arguments that are
  not a JSON object are kept as `{"_raw": "<arguments>"}`, empty arguments are `{}`) and `tool_result` blocks
  in a `user` turn; consecutive turns of one role are merged into one. The first turn is always a `user` one:
  the oldest units up to the first user message are left out when the budget or the summary cut between a
  question and its answer (the API refuses a first assistant turn); they count in `dropped`.
- `memsvc`: the stored messages byte for byte, the summary as a `system` message without an `id`.

Fields a format has no place for are left out: names in `responses` and `anthropic` (and on tool messages in
`openai`, which does not take one), metadata everywhere but `memsvc`.

`tokens`, per format (see `memsvc.context` for what is counted in a message):
- `openai`, `memsvc`: the window's Chat Completions bill, exact;
- `responses`: the same figure, an upper bound for its items (the same texts, as many or fewer frames, no names);
- `anthropic`: the `system` string's tokens (it is a parameter, not a framed message) plus every other
  message's count, an upper bound for merged turns. A system string of one text takes its count from the
  record; one joined from several is tokenized on each read (the only text a read tokenizes): if it costs
  more than the framed messages it replaces, the oldest units are dropped until `tokens <= max_tokens`.
"""

from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson

from memsvc.context import BARE, INSTRUCTION, ContextBudgetTooSmall, Window, kind_of, tokens_of
from memsvc.tokens import REPLY_PRIMING, TokenCounter, tool_call_parts

Format = Literal['openai', 'responses', 'anthropic', 'memsvc']
FORMATS: tuple[Format, ...] = get_args(Format)

_SYSTEM_JOIN: Final = '\n\n'


@dataclass(slots=True, frozen=True)
class ContextWindow:
    """The answer of the context route. `messages` holds JSON-ready values: dicts, and `orjson.Fragment`s for
    what goes out copied from the stored bytes (every message in `memsvc`, bare ones in the other formats).
    `system` is set for `anthropic` only, when there is system text."""

    format: Format
    messages: list[Any]
    system: str | None
    tokens: int
    dropped: int
    first_id: int | None
    summary: bool

    def to_json(self) -> bytes:
        body: dict[str, Any] = {'format': self.format, 'messages': self.messages}
        if self.system is not None:
            body['system'] = self.system
        body |= {'tokens': self.tokens, 'dropped': self.dropped, 'first_id': self.first_id, 'summary': self.summary}
        return orjson.dumps(body)


def _calls(message: dict[str, Any]) -> list[Any]:
    calls = message.get('tool_calls') if message['role'] == 'assistant' else None
    return calls if isinstance(calls, list) else []


# A stored message is `{"id":N,"role":R,"content":C,...,"timestamp":T}` (models.encode_message, with_id); a
# bare one (context.BARE) has nothing in place of the `...`. `,"timestamp":` with its quotes bare occurs in
# no JSON string (a quote inside one is escaped), so its last occurrence is where the timestamp starts.
_ID_END: Final = len(b'{"id":')
_CONTENT: Final = b',"content":'
_TIMESTAMP: Final = b',"timestamp":'


def _bare_fields(raw: bytes) -> bytes:
    """`"role":R,"content":C` of a bare stored message, as stored."""
    return raw[raw.index(b',', _ID_END) + 1 : raw.rindex(_TIMESTAMP)]


def _bare_content(raw: bytes) -> bytes:
    """The JSON string C of a bare stored message, as stored."""
    return raw[raw.index(_CONTENT) + len(_CONTENT) : raw.rindex(_TIMESTAMP)]


def _openai(raw: bytes, value: int) -> Any:
    """The stored message less what Chat Completions does not take: bare messages as their bytes, others
    decoded here (so changed in place)."""
    if value & BARE:
        return orjson.Fragment(b'{' + _bare_fields(raw) + b'}')
    message: dict[str, Any] = orjson.loads(raw)
    del message['id'], message['timestamp']
    message.pop('metadata', None)
    if message['role'] == 'tool':
        message.pop('name', None)
        message.pop('tool_calls', None)
        message.setdefault('tool_call_id', '')
        return message
    message.pop('tool_call_id', None)
    if 'name' in message and not message['name']:
        del message['name']
    calls = message.pop('tool_calls', None)
    if calls and message['role'] == 'assistant':
        message['tool_calls'] = [
            {'id': call_id, 'type': 'function', 'function': {'name': function, 'arguments': arguments}}
            for call_id, function, arguments in map(tool_call_parts, calls)
        ]
    return message


def _responses(raw: bytes, value: int, out: list[Any]) -> None:
    if value & BARE:
        out.append(orjson.Fragment(b'{"type":"message",' + _bare_fields(raw) + b'}'))
        return
    message: dict[str, Any] = orjson.loads(raw)
    role = message['role']
    if role == 'tool':
        out.append(
            {'type': 'function_call_output', 'call_id': message.get('tool_call_id') or '', 'output': message['content']}
        )
        return
    calls = _calls(message)
    if message['content'] or not calls:
        out.append({'type': 'message', 'role': role, 'content': message['content']})
    for call_id, function, arguments in map(tool_call_parts, calls):
        out.append({'type': 'function_call', 'call_id': call_id, 'name': function, 'arguments': arguments})


def tool_input(arguments: str) -> dict[str, Any]:
    """Anthropic's `tool_use.input` for OpenAI-style `arguments`: the JSON object they encode; anything else
    (invalid JSON, a JSON value that is not an object) is kept as `{"_raw": arguments}`, so nothing is lost."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {'_raw': arguments}
    return value if isinstance(value, dict) else {'_raw': arguments}


def _anthropic_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    role, content = message['role'], message['content']
    if role == 'tool':
        return 'user', [{'type': 'tool_result', 'tool_use_id': message.get('tool_call_id') or '', 'content': content}]
    calls = _calls(message)
    blocks: list[dict[str, Any]] = [{'type': 'text', 'text': content}] if content or not calls else []
    for call_id, function, arguments in map(tool_call_parts, calls):
        blocks.append({'type': 'tool_use', 'id': call_id, 'name': function, 'input': tool_input(arguments)})
    return role, blocks


def _instruction(raw: bytes, value: int, counter: TokenCounter) -> tuple[str, int | None]:
    """The text of a system/developer message and, when its record gives it (a bare message), its tokens."""
    message = orjson.loads(raw)
    return message['content'], tokens_of(value) - counter.framing(message['role']) if value & BARE else None


def _system_tokens(system: list[tuple[str, int | None]], counter: TokenCounter) -> tuple[str | None, int]:
    """The `system` string and its tokens: a single text's from its record, a join's counted (joining can
    merge tokens across the separator, so the parts' counts do not add up to the join's)."""
    if not system:
        return None, 0
    if len(system) == 1 and system[0][1] is not None:
        return system[0][0], system[0][1]
    text = _SYSTEM_JOIN.join(part for part, _ in system)
    return text, counter.text(text)


def _anthropic(window: Window, counter: TokenCounter) -> tuple[str | None, list[Any], int]:
    system = [_instruction(raw, value, counter) for raw, value in window.pinned]
    if window.summary is not None:
        system.append((window.summary.content, window.summary.tokens - counter.framing('system')))
    turns: list[dict[str, Any]] = []
    tokens = 0
    for unit in window.units:
        for raw, value in unit:
            if kind_of(value) == INSTRUCTION:
                system.append(_instruction(raw, value, counter))
                continue
            tokens += tokens_of(value)
            if value & BARE:
                role = 'user' if raw.startswith(b'"role":"user"', raw.index(b',', _ID_END) + 1) else 'assistant'
                blocks: list[Any] = [orjson.Fragment(b'{"type":"text","text":' + _bare_content(raw) + b'}')]
            else:
                role, blocks = _anthropic_blocks(orjson.loads(raw))
            if turns and turns[-1]['role'] == role:
                turns[-1]['content'].extend(blocks)
            else:
                turns.append({'role': role, 'content': blocks})
    text, system_tokens = _system_tokens(system, counter)
    tokens += system_tokens
    return text, turns, tokens + REPLY_PRIMING if text is not None or turns else 0


_ASSISTANT: Final = b'"role":"assistant"'


def _drop_leading_assistants(window: Window) -> None:
    """Leave out the oldest units up to the first that opens a `user` turn: the Messages API answers 400 to
    `messages` whose first turn is the assistant's ("first message must use the user role"), which a window
    cut between a question and its answer would otherwise start with. They count in `dropped`."""
    units = window.units
    first = 0  # the first unit that opens a turn (system/developer ones go to `system`, wherever they are)
    while first < len(units):
        raw, value = units[first][0]
        if kind_of(value) != INSTRUCTION:
            if not raw.startswith(_ASSISTANT, raw.index(b',', _ID_END) + 1):
                return  # a user message (a tool message opens no unit: those without their call are left out)
            window.dropped += sum(len(unit) for unit in units[: first + 1])
            del units[: first + 1]  # the contiguous window goes on from the next unit
            first = 0
            continue
        first += 1


def _provider_messages(window: Window, format: Literal['openai', 'responses', 'memsvc']) -> list[Any]:
    summary = window.summary
    messages: list[Any] = []
    match format:
        case 'openai':
            messages += [_openai(raw, value) for raw, value in window.pinned]
            if summary is not None:
                messages.append({'role': 'system', 'content': summary.content})
            messages += [_openai(raw, value) for unit in window.units for raw, value in unit]
        case 'responses':
            for raw, value in window.pinned:
                _responses(raw, value, messages)
            if summary is not None:
                messages.append({'type': 'message', 'role': 'system', 'content': summary.content})
            for unit in window.units:
                for raw, value in unit:
                    _responses(raw, value, messages)
        case 'memsvc':
            messages += [orjson.Fragment(raw) for raw, _ in window.pinned]
            if summary is not None:
                messages.append({'role': 'system', 'content': summary.content})
            messages += [orjson.Fragment(raw) for unit in window.units for raw, _ in unit]
    return messages


def render(window: Window, format: Format, counter: TokenCounter) -> ContextWindow:
    """Shape `window` for `format`; `counter` is the encoding the window was counted with (used by `anthropic`
    only, for its `system` text). Raises `ContextBudgetTooSmall` if, in `anthropic`, the system text alone
    exceeds the budget."""
    if format != 'anthropic':
        messages = _provider_messages(window, format)
        return ContextWindow(
            format, messages, None, window.tokens, window.dropped, window.first_id, window.summary is not None
        )
    _drop_leading_assistants(window)
    system, messages, tokens = _anthropic(window, counter)
    while window.max_tokens is not None and tokens > window.max_tokens:
        if not window.units:
            raise ContextBudgetTooSmall(tokens, window.max_tokens)
        window.dropped += len(window.units.pop(0))
        _drop_leading_assistants(window)
        system, messages, tokens = _anthropic(window, counter)
    return ContextWindow(format, messages, system, tokens, window.dropped, window.first_id, window.summary is not None)
