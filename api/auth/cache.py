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


class AuthCache:
    def __init__(self, ttl: float = AUTH_CACHE_SECONDS, max_entries: int = AUTH_CACHE_ENTRIES):
        self._cache: TTLCache[str, Principal] = TTLCache(ttl, max_entries)

    @property
    def ttl(self) -> float:
        return self._cache.ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._cache.ttl = value

    @staticmethod
    def _slot(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> Principal | None:
        return self._cache.get(self._slot(key))

    def put(self, key: str, principal: Principal) -> None:
        self._cache.put(self._slot(key), principal)
