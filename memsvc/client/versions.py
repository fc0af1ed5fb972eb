"""Session versions on the client's side: a value read with its ETag, what `if_match=` takes, and the merge patch
that `modify` writes."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar('T')


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A value and the session version it was read at (`etag` as the server sent it, e.g. `"3"`)."""

    value: T
    etag: str

    @property
    def version(self) -> int:
        return int(self.etag.strip('"'))


IfMatch = str | int | Versioned[Any]
"""An ETag (`'"3"'`), a version (`3`), a `Versioned` read, or `'*'` (only if the session exists)."""


def if_match_header(value: IfMatch | None) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Versioned):
        return {'If-Match': value.etag}
    if isinstance(value, int):
        return {'If-Match': f'"{value}"'}
    return {'If-Match': value}


def metadata_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: keys that went are null, objects are patched
    key by key, anything else that changed is replaced. (A merge patch cannot set a value to null: `new` has none.)"""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = metadata_patch(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or before != value or type(before) is not type(value):
            patch[key] = value
    return patch
