"""Settings: names from the environment, defaults, and the example file documenting every variable."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices

from memsvc.settings import Settings, env_name

EXAMPLE = Path(__file__).parent.parent / 'config' / 'memsvc.env.example'


def test_example_file_documents_every_variable_with_its_default() -> None:
    documented = dict(re.findall(r'^([A-Z_]+)=(.*)$', EXAMPLE.read_text(), flags=re.MULTILINE))
    defaults = Settings.model_construct()
    expected = {}
    for field, info in Settings.model_fields.items():
        value = getattr(defaults, field) if field in defaults.__dict__ else info.default
        text = '' if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        expected[env_name(field)] = text
    assert documented == expected


def test_seed_names_and_memsvc_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('MEMORY_TYPE', 'redis')
    monkeypatch.setenv('REDIS_URL', 'redis://example:6380/2')
    monkeypatch.setenv('MEMSVC_PORT', '9000')
    monkeypatch.setenv('MEMSVC_API_KEY', 'sekrit-123')
    settings = Settings()
    assert settings.memory_type == 'redis'
    assert settings.redis_url == 'redis://example:6380/2'
    assert settings.port == 9000
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == 'sekrit-123'
    assert 'sekrit' not in repr(settings), 'the key never shows up in logs'


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('MEMSVC_PORT', '9000')
    assert Settings(port=9100).port == 9100


def read_names() -> list[str]:
    """Every environment variable `Settings` reads: each field's aliases, or its MEMSVC_ name."""
    names = []
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names += [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else [f'MEMSVC_{field.upper()}']
    return names


@pytest.fixture(scope='module')
def shell_with_memsvc_variables() -> Iterator[None]:
    """A shell that set every variable memsvc reads, to something other than its default (in upper and lower
    case: pydantic-settings reads both). Module-scoped, so it is set before conftest's function-scoped fixture
    that clears them runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name in read_names():
            patch.setenv(name, 'set-by-the-shell')
        patch.setenv('memsvc_max_body_bytes', '2048')
        patch.setenv('MEMSVC_MAX_BODY_BYTES', '4096')
        yield


@pytest.mark.usefixtures('shell_with_memsvc_variables')
def test_tests_see_the_defaults_whatever_the_shell_set() -> None:
    settings = Settings()
    assert settings.max_body_bytes == 1024 * 1024
    assert settings == Settings.model_construct(), 'every setting is its default'


def test_empty_variables_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('CHROMA_PERSIST_DIRECTORY', '')
    monkeypatch.setenv('MEMSVC_API_KEY', '')
    settings = Settings()
    assert settings.chroma_persist_directory is None
    assert settings.api_key is None
