"""A short-lived, per-process cache of successful API-key authentications.

Every /v1 request authenticates; without a cache that is a database transaction per request,
about a third of the cost of a simple read. Entries live `ttl` seconds, so a revoked key stops
working within that time (and at once in a process that has not seen it recently). Entries are
keyed by the key's SHA-256, never by the key itself, and only successes are cached: a wrong key
always reaches the database and the constant-time comparison.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from api.auth.service import Principal

# How long a verified key is trusted without asking the database again.
AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_ENTRIES = 10_000


class AuthCache:
    def __init__(self, ttl: float = AUTH_CACHE_SECONDS, max_entries: int = AUTH_CACHE_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _slot(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        slot = self._slot(key)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return None
            expires, principal = entry
            if expires < time.monotonic():
                del self._entries[slot]
                return None
            return principal

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[self._slot(key)] = (time.monotonic() + self.ttl, principal)
            self._entries.move_to_end(self._slot(key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
