"""The metadata index: which sessions hold which value under an indexed key (`MEMSVC_INDEXED_METADATA`).

A session's index entries are the (key, value) pairs of its metadata whose key is indexed and whose value is a
string: `{"user_id": "123"}` is found by `metadata.user_id=123`; `{"user_id": 123}` (a number), `{"user_id":
null}` or a nested object is not indexed, and so never matches a filter. A filter (`Where`) is a set of such
pairs; a session matches when its metadata holds all of them. Every store keeps the entries with the session's
writes (README, "Sessions of one person"); this module is the rule they share, and holds no storage.
"""

from collections.abc import Mapping, Sequence

import orjson

Entry = tuple[str, str]
"""An indexed key and a string value of it."""
Where = tuple[Entry, ...]
"""A metadata filter: the entries a session must all hold (none: every session). In the order given."""


def where_of(filters: Mapping[str, str]) -> Where:
    return tuple(filters.items())


def entries(metadata: bytes, keys: Sequence[str]) -> Where:
    """The index entries of a session whose metadata is `metadata` (its JSON), in the order of `keys`."""
    found = orjson.loads(metadata)
    return tuple((key, value) for key in keys if isinstance(value := found.get(key), str))


def matches(metadata: bytes, where: Where) -> bool:
    """Whether metadata `metadata` (its JSON) holds every entry of `where`: a store's check of what its index
    found, where the index may be behind the session (Redis Cluster, README) or a key's values were indexed
    under another setting."""
    if not where:
        return True
    found = orjson.loads(metadata)
    return all(found.get(key) == value for key, value in where)
