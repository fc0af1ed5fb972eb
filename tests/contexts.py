"""Stored sessions for the context-window tests: messages made by `models`, with their records, handed over
as a store would."""

from collections.abc import Iterator
from typing import Any

import orjson

from memsvc.context import Counted, Summary, Window, fit, leading_instructions, message_id, record, tokens_of
from memsvc.models import NewMessage, encode_message, utc_now, with_id
from memsvc.render import ContextWindow, Format, render
from memsvc.tokens import TokenCounter


def call(call_id: str, name: str = 'get_weather', arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {'id': call_id, 'type': 'function', 'function': {'name': name, 'arguments': arguments}}


class Session:
    """Stored messages (ids from 1, or as given) with their counts, read as a store would hand them over."""

    def __init__(self, counter: TokenCounter, *messages: dict[str, Any]) -> None:
        self.counter = counter
        self.stored: list[Counted] = []
        next_id = 1
        for message in messages:
            fields = dict(message)
            next_id = fields.pop('id', next_id)
            sent: NewMessage = {'role': fields.pop('role'), 'content': fields.pop('content', ''), **fields}  # type: ignore[typeddict-item]
            raw = with_id(next_id, encode_message(sent, utc_now()))
            self.stored.append((raw, record(counter, orjson.loads(raw))))
            next_id += 1
        self.pinned = leading_instructions(self.stored)
        self.read = 0

    def newest_first(self) -> Iterator[Counted]:
        for counted in reversed(self.stored[len(self.pinned) :]):
            self.read += 1
            yield counted

    def tokens(self, *ids: int) -> int:
        """The counts of the messages with `ids`."""
        return sum(tokens_of(value) for raw, value in self.stored if message_id(raw) in ids)

    def summary(self, content: str, through_id: int) -> Summary:
        return Summary(content, through_id, self.counter.system(content))

    def fit(self, max_tokens: int | None = None, summary: Summary | None = None) -> Window:
        return fit(self.pinned, summary, self.newest_first(), len(self.stored), max_tokens)

    def context(
        self, max_tokens: int | None = None, summary: Summary | None = None, format: Format = 'openai'
    ) -> ContextWindow:
        return render(self.fit(max_tokens, summary), format, self.counter)


def sent(window: ContextWindow) -> list[Any]:
    """The messages as a gateway receives them."""
    messages: list[Any] = orjson.loads(window.to_json())['messages']
    return messages


def ids(window: ContextWindow) -> list[int]:
    assert window.format == 'memsvc'
    return [message['id'] for message in sent(window) if 'id' in message]


def chat(counter: TokenCounter) -> Session:
    return Session(
        counter,
        {'role': 'system', 'content': 'You are terse.'},
        {'role': 'developer', 'content': 'Answer in English.'},
        {'role': 'user', 'content': 'What is the weather in Paris?'},  # 3
        {'role': 'assistant', 'content': '', 'tool_calls': [call('c1'), call('c2', 'get_time', '{}')]},  # 4
        {'role': 'tool', 'content': 'sunny, 21 degrees', 'tool_call_id': 'c1'},  # 5
        {'role': 'tool', 'content': '14:02', 'tool_call_id': 'c2'},  # 6
        {'role': 'assistant', 'content': 'Sunny and 21 degrees at 14:02.'},  # 7
        {'role': 'user', 'content': 'Thanks! And tomorrow?'},  # 8
    )
