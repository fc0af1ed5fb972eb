"""Plain helpers shared by the tests: the environment memsvc reads, and how to spell it out of a test.
The fixtures live in `conftest.py` and the servers the suite starts in `servers.py` and `chroma_server.py`."""

import os

from memsvc.metrics import MULTIPROC_ENV

_PREFIXES = ('MEMSVC_', 'REDIS_', 'CHROMA_')
_NAMES = frozenset({'MEMORY_TYPE', MULTIPROC_ENV})


def is_memsvc_variable(name: str) -> bool:
    """Whether memsvc may read the environment variable `name`: `Settings` reads `MEMSVC_*` and the seed's
    `MEMORY_TYPE`, `REDIS_URL`, `CHROMA_*` (the prefixes cover names added later), `metrics.py` reads
    `PROMETHEUS_MULTIPROC_DIR`. pydantic-settings matches names in any case, so this does too."""
    upper = name.upper()
    return upper.startswith(_PREFIXES) or upper in _NAMES


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without memsvc's variables, plus `extra`: for a memsvc process."""
    env = {name: value for name, value in os.environ.items() if not is_memsvc_variable(name)}
    env.update(extra)
    return env
