"""A per-process cache of successful API-key authentications, emptied when any key is revoked.

Every /v1 request authenticates; without a cache that is a database transaction per request,
about a third of the cost of a simple read. Entries are keyed by the key's SHA-256, never by the
key itself, and only successes are cached: a wrong key always reaches the database and the
constant-time comparison.

Revocation: a revoked key must not work for another request in any API process. The cache is
emptied when a revocation is announced (`api.auth.revocation`: at once in the revoking process,
by Redis pub/sub in the others) and it is only *trusted* while that announcement can reach it: a
process that is not subscribed (starting, or its Redis connection lost) serves every request from
the database. Two guards close the races:

- `generation` counts invalidations; a lookup started before one may not store its (possibly
  stale) answer afterwards (`put(..., generation)`);
- entries still expire after `ttl` seconds, the bound for a key revoked behind the API's back
  (a direct database update).
"""

from __future__ import annotations

import hashlib
import threading

from api.auth.service import Principal
from api.ttl_cache import TTLCache

# How long a verified key is trusted without asking the database again (revocations through the
# API empty the cache at once; this bounds a change made directly in the database).
AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_ENTRIES = 10_000


class AuthCache(TTLCache[str, Principal]):
    """Keyed by the API key's SHA-256: the clear key is never held in memory longer than a request.

    `trusted=False` starts it distrusted (nothing served, nothing stored) until `trust()`: what a
    process with Redis does until its revocation listener is subscribed."""

    def __init__(
        self, ttl: float = AUTH_CACHE_SECONDS, max_entries: int = AUTH_CACHE_ENTRIES, *, trusted: bool = True
    ):
        super().__init__(ttl, max_entries)
        self.generation = 0
        self.trusted = trusted
        self._guard = threading.Lock()  # orders put() against invalidations

    def get(self, key: str) -> Principal | None:
        if not self.trusted:
            return None
        return super().get(_slot(key))

    def put(self, key: str, value: Principal, generation: int | None = None) -> None:
        """Store `value` unless the cache is distrusted or was invalidated since `generation` (the
        `generation` read before the database lookup that produced `value`)."""
        with self._guard:
            if self.trusted and (generation is None or generation == self.generation):
                super().put(_slot(key), value)

    def invalidate(self) -> None:
        """A key was revoked: forget every entry, and any answer a running lookup brings back."""
        with self._guard:
            self.generation += 1
            self.clear()

    def distrust(self) -> None:
        """Revocations may no longer reach this process: serve nothing from the cache."""
        with self._guard:
            self.trusted = False
            self.generation += 1
            self.clear()

    def trust(self) -> None:
        """Revocations reach this process again; what was cached before is forgotten (a revocation
        may have been missed meanwhile)."""
        with self._guard:
            self.generation += 1
            self.clear()
            self.trusted = True


def _slot(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
