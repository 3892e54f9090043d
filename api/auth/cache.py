"""A short-lived, per-process cache of successful API-key authentications.

Every /v1 request authenticates; without a cache that is a database transaction per request,
about a third of the cost of a simple read. Entries live `ttl` seconds, so a revoked key stops
working within that time (and at once in a process that has not seen it recently). Entries are
keyed by the key's SHA-256, never by the key itself, and only successes are cached: a wrong key
always reaches the database and the constant-time comparison.
"""

from __future__ import annotations

import hashlib

from api.auth.service import Principal
from api.ttl_cache import TTLCache

# How long a verified key is trusted without asking the database again.
AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_ENTRIES = 10_000


class AuthCache(TTLCache[str, Principal]):
    """Keyed by the API key's SHA-256: the clear key is never held in memory longer than a request."""

    def __init__(self, ttl: float = AUTH_CACHE_SECONDS, max_entries: int = AUTH_CACHE_ENTRIES):
        super().__init__(ttl, max_entries)

    def get(self, key: str) -> Principal | None:
        return super().get(_slot(key))

    def put(self, key: str, value: Principal) -> None:
        super().put(_slot(key), value)


def _slot(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
