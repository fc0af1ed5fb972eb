"""Settings: the only place the environment is read. Built once in `main()` and passed down."""

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memsvc.auth import DEFAULT_TENANT, parse_api_keys

MemoryType = Literal['in_memory', 'redis', 'chroma']
MIN_RESPONSE_BYTES = 1024 * 1024
"""The smallest `MEMSVC_MAX_RESPONSE_BYTES`: answers up to this size need no check against it."""
LogLevel = Literal['DEBUG', 'INFO', 'WARNING', 'ERROR']
UNBOUNDED_LINE_BYTES = 16 * 1024**3
"""The per-line limit of an import when no limit bounds a session (`Settings.import_line_bytes`)."""
MAX_INDEXED_KEYS = 8
_INDEXED_KEY = re.compile(r'[A-Za-z0-9_-]{1,64}')


def _env(name: str) -> Any:
    """The seed's variable names, kept, with a MEMSVC_ spelling accepted too."""
    return AliasChoices(name, f'MEMSVC_{name}')


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix='MEMSVC_', frozen=True, env_ignore_empty=True, validate_by_name=True, extra='forbid'
    )

    memory_type: MemoryType = Field('in_memory', validation_alias=_env('MEMORY_TYPE'))
    redis_url: str = Field('redis://127.0.0.1:6379/0', validation_alias=_env('REDIS_URL'))
    chroma_persist_directory: Path | None = Field(None, validation_alias=_env('CHROMA_PERSIST_DIRECTORY'))
    chroma_host: str | None = Field(None, validation_alias=_env('CHROMA_HOST'))
    chroma_port: int = Field(8000, ge=1, le=65535, validation_alias=_env('CHROMA_PORT'))
    chroma_threads: int = Field(4, ge=1, le=64, description='threads for Chroma calls and embedding, per process')
    chroma_timeout: float = Field(10.0, gt=0, le=300, description='seconds to wait for a Chroma server, then 503')
    embedding_model_dir: Path | None = Field(None, description='a directory with model.onnx and tokenizer.json')
    redis_max_connections: int = Field(64, ge=1, le=10_000, description='Redis connections per process (per node)')
    redis_pool_timeout: float = Field(0.5, gt=0, le=60, description='seconds to wait for a free connection, then 503')
    redis_connect_timeout: float = Field(0.5, gt=0, le=60, description='seconds to open a connection, then 503')
    redis_socket_timeout: float = Field(1.0, gt=0, le=300, description='seconds to wait for a reply, then 503')

    host: str = '127.0.0.1'
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    api_key: SecretStr | None = Field(None, min_length=1)
    api_keys: SecretStr | None = Field(None, description='tenant=key,tenant2=key2: one key per tenant')
    api_keys_file: Path | None = Field(None, description='a file of tenant=key lines, instead of MEMSVC_API_KEYS')
    key_prefix: Annotated[str, Field(pattern=r'^[A-Za-z0-9_.:-]{1,64}$')] = 'memsvc'
    session_ttl_seconds: int = Field(0, ge=0, description='idle sessions expire after this long; 0 = never')
    max_messages_per_session: int = Field(0, ge=0, description='keep only the newest N messages; 0 = all')
    on_full_session: Literal['trim', 'reject'] = Field(
        'trim', description='at MEMSVC_MAX_MESSAGES_PER_SESSION: drop the oldest, or refuse the append (409)'
    )
    max_sessions_per_tenant: int = Field(0, ge=0, description='refuse new sessions past this many (409); 0 = none')

    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        ge=MIN_RESPONSE_BYTES,
        description='largest answer; a larger one is a 400 that says how to page',
    )
    max_content_chars: int = Field(100_000, ge=1)
    max_metadata_keys: int = Field(64, ge=1, le=1024)
    max_metadata_bytes: int = Field(16 * 1024, ge=2, le=1024 * 1024)
    max_batch: int = Field(100, ge=1, le=10_000)
    max_import_line_bytes: int | None = Field(
        None, ge=1024, description='longest line of an import; unset: the most a session can take (import_line_bytes)'
    )
    idempotency_ttl_seconds: int = Field(86_400, ge=1, description='how long an Idempotency-Key is remembered')
    indexed_metadata: str = Field(
        'user_id', description='metadata keys whose string values are indexed, for GET/DELETE /sessions?metadata.<key>='
    )
    erase_batch: int = Field(
        100, ge=1, le=1000, description='sessions an erasure deletes per step, before other requests run again'
    )

    log_level: LogLevel = 'INFO'
    log_format: Literal['text', 'json'] = 'text'
    store_timeout_seconds: float | None = Field(
        None, gt=0, le=600, description='longest a store operation may take, then 503; unset: 10 s, 60 s on Chroma'
    )
    access_log: bool = False
    console: bool = Field(True, description='serve the web console at /console (static files; data through the API)')
    shutdown_timeout: float = Field(30.0, gt=0, description='seconds to finish in-flight requests on SIGTERM')
    header_timeout_seconds: float = Field(5.0, gt=0, le=600, description='seconds to receive a request head')
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600, description='seconds to receive a request body')
    send_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description='seconds a client may take none of its answer before it is dropped'
    )
    keepalive_timeout_seconds: float = Field(75.0, ge=0, le=3600, description='an idle connection is closed after')
    max_streams: int = Field(10_000, ge=1, le=1_000_000, description='open event streams per process, then 503')
    stream_keepalive_seconds: float = Field(
        15.0, gt=0, le=300, description='an event stream sends a comment line after this long without an event'
    )
    max_connections: int | None = Field(
        None, ge=1, le=1_000_000, description='open connections per process; unset: 1000, or what fits the fd limit'
    )

    @model_validator(mode='before')
    @classmethod
    def _upper_log_level(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get('log_level'), str):
            data = {**data, 'log_level': data['log_level'].upper()}
        return data

    @field_validator('indexed_metadata')
    @classmethod
    def _indexed_keys(cls, value: str) -> str:
        keys = [key.strip() for key in value.split(',')]
        if not 1 <= len(keys) <= MAX_INDEXED_KEYS or not all(_INDEXED_KEY.fullmatch(key) for key in keys):
            raise ValueError(
                f'give 1 to {MAX_INDEXED_KEYS} metadata keys separated by commas, each of 1-64 characters of '
                'A-Z a-z 0-9 _ -'
            )
        if len(set(keys)) != len(keys):
            raise ValueError('a key is given twice')
        return ','.join(keys)

    def indexed_keys(self) -> tuple[str, ...]:
        """`MEMSVC_INDEXED_METADATA` as its keys, in the order given."""
        return tuple(self.indexed_metadata.split(','))

    @model_validator(mode='after')
    def _one_source_of_api_keys(self) -> Self:
        given = [name for name in ('api_key', 'api_keys', 'api_keys_file') if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f'{given[1]}: set only one of MEMSVC_API_KEY, MEMSVC_API_KEYS, MEMSVC_API_KEYS_FILE')
        self.tenant_keys()  # a malformed list stops the start here, naming the variable
        return self

    def store_deadline(self) -> float | None:
        """The deadline of one store operation: none in memory (nothing there waits); on Chroma, whose appends
        include computing the embeddings (seconds for a full batch of long messages on a small machine), 60 s."""
        if self.memory_type == 'in_memory':
            return None
        if self.store_timeout_seconds is not None:
            return self.store_timeout_seconds
        return 60.0 if self.memory_type == 'chroma' else 10.0

    def import_line_bytes(self) -> int:
        """The per-line limit of an import (`MEMSVC_MAX_IMPORT_LINE_BYTES`, or else the most bytes one session can
        take as a line under the other limits). A stored message is at most 4 x `MEMSVC_MAX_BODY_BYTES` + 64: the body
        it came in, its id and timestamp added, and numbers written out in full (`1e15` is stored as
        `1000000000000000.0`). A line's fields but its messages are at most 4,096 bytes, the metadata and the summary
        (6 bytes a character as JSON, at most). With `MEMSVC_MAX_MESSAGES_PER_SESSION` unset no limit bounds a
        session: then `UNBOUNDED_LINE_BYTES`. The import holds about 128 KiB of a long line at a time, whatever the
        limit (`memsvc.lines`)."""
        if self.max_import_line_bytes is not None:
            return self.max_import_line_bytes
        if not self.max_messages_per_session:
            return UNBOUNDED_LINE_BYTES
        head = 4096 + self.max_metadata_bytes + 6 * self.max_content_chars
        return head + self.max_messages_per_session * (4 * self.max_body_bytes + 64 + 1)

    def tenant_keys(self) -> dict[str, str] | None:
        """{tenant: key}, or None without authentication. `MEMSVC_API_KEY` is one key of the default tenant."""
        if self.api_key is not None:
            return {DEFAULT_TENANT: self.api_key.get_secret_value()}
        try:
            if self.api_keys is not None:
                return parse_api_keys(self.api_keys.get_secret_value())
            if self.api_keys_file is not None:
                return parse_api_keys(self.api_keys_file.read_text())
        except ValueError as exc:
            field = 'api_keys' if self.api_keys is not None else 'api_keys_file'
            raise ValueError(f'{field}: {exc}') from None
        except OSError as exc:
            raise ValueError(f'api_keys_file: cannot read {self.api_keys_file}: {exc.strerror}') from None
        return None

    @model_validator(mode='after')
    def _one_message_fits_an_answer(self) -> Self:
        if self.max_response_bytes < 2 * self.max_body_bytes:
            raise ValueError(
                'max_response_bytes: must be at least twice MEMSVC_MAX_BODY_BYTES, so that any stored message '
                'can be read back'
            )
        return self

    @model_validator(mode='after')
    def _workers_need_a_shared_store(self) -> Self:
        if self.workers > 1 and self.memory_type == 'in_memory':
            raise ValueError(
                'workers: --workers > 1 needs a shared store; with MEMORY_TYPE=in_memory each process '
                'would hold different data (use MEMORY_TYPE=redis)'
            )
        if self.workers > 1 and self.memory_type == 'chroma' and self.chroma_host is None:
            raise ValueError(
                'workers: --workers > 1 needs a Chroma server (CHROMA_HOST); processes sharing embedded Chroma '
                'would see inconsistent vector indexes'
            )
        return self


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        assert isinstance(first, str)
        return first
    return f'MEMSVC_{field.upper()}'


def describe_error(exc: ValidationError) -> str:
    """One line naming the variable, for a process that refuses to start."""
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err['loc']]
    msg = err['msg'].removeprefix('Value error, ')
    if loc:
        name = loc[0].removeprefix('MEMSVC_').lower()
        return f'invalid configuration: {env_name(name)}: {msg}'
    field, _, rest = msg.partition(': ')
    if rest and field in Settings.model_fields:
        return f'invalid configuration: {env_name(field)}: {rest}'
    return f'invalid configuration: {msg}'


def describe_value_error(exc: ValueError) -> str:
    """One line for a `field: problem` error found after validation (e.g. against the descriptor limit)."""
    field, _, rest = str(exc).partition(': ')
    if rest and field in Settings.model_fields:
        return f'invalid configuration: {env_name(field)}: {rest}'
    return f'invalid configuration: {exc}'
