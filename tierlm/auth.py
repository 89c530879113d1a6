"""API keys: stored as SHA-256 hashes, compared in constant time, mapped to tenants."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

# Clients send the key in either header; `authorization` follows the OAuth bearer style
# that OpenAI-compatible clients already use.
API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"


def hash_key(key: str) -> str:
    """The hex SHA-256 that policy and tenant files store instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """Maps presented API keys to tenant names without keeping the keys themselves."""

    def __init__(self, tenant_by_hash: Mapping[str, str]):
        self._entries = [(bytes.fromhex(digest), tenant) for digest, tenant in tenant_by_hash.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, key: str) -> str | None:
        """The tenant owning `key`, or None.

        Every stored hash is compared, match or not, so the time taken does not reveal
        how many entries were tried before the right one.
        """
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found: str | None = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found


def key_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """Extract the API key from gRPC invocation metadata (`x-api-key` or `authorization: Bearer`)."""
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if name == API_KEY_HEADER:
            return value
        if name == AUTHORIZATION_HEADER and value.lower().startswith("bearer "):
            return value[len("bearer ") :].strip()
    return None
