"""API keys and the tenants they name. The tenant comes from the key, never from the request."""

import hmac
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memsvc.settings import Settings

DEFAULT_TENANT = 'default'
TENANT_PATTERN = r'^[A-Za-z0-9_.-]{1,64}$'
_TENANT = re.compile(TENANT_PATTERN)


def parse_api_keys(text: str) -> dict[str, str]:
    """`tenant=key` pairs, separated by commas or new lines (`#` starts a comment), as {tenant: key}.

    Raises ValueError naming the problem: a malformed pair, a tenant name outside `TENANT_PATTERN`
    (tenants become part of storage keys), a tenant given twice, or one key for two tenants.
    """
    keys: dict[str, str] = {}
    for line in text.splitlines():
        for pair in line.split('#', 1)[0].split(','):
            if not pair.strip():
                continue
            tenant, sep, key = (part.strip() for part in pair.partition('='))
            if not sep or not key:
                raise ValueError('give each tenant as tenant=key')
            if not _TENANT.fullmatch(tenant):
                raise ValueError(f'tenant {tenant!r}: use 1-64 characters of A-Z a-z 0-9 _ . -')
            if tenant in keys:
                raise ValueError(f'tenant {tenant!r} is given twice')
            if key in keys.values():
                raise ValueError(f'tenant {tenant!r} has the same key as another tenant')
            keys[tenant] = key
    if not keys:
        raise ValueError('no tenant=key pair given')
    return keys


class Keyring:
    """Finds the tenant of an `Authorization` header in constant time with respect to the keys' content."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(b'Bearer ' + key.encode(), tenant) for tenant, key in keys.items()]

    @classmethod
    def from_settings(cls, settings: 'Settings') -> 'Keyring | None':
        """None when the service runs without API keys (one default tenant, no authentication)."""
        keys = settings.tenant_keys()
        return None if keys is None else cls(keys)

    def tenant_for(self, authorization: bytes) -> str | None:
        found = None
        for expected, tenant in self._entries:  # every entry is compared: the time does not tell which matched
            if hmac.compare_digest(authorization, expected):
                found = tenant
        return found
