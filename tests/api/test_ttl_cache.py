"""The per-process cache behind the auth cache and the chat endpoint's resolved model names."""

from __future__ import annotations

import time

from api.ttl_cache import TTLCache


def test_entries_expire_after_ttl() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=0.2)
    cache.put("a", 1)
    assert cache.get("a") == 1
    time.sleep(0.25)
    assert cache.get("a") is None


def test_bounded_least_recently_stored_go_first() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=60, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # stored again: now the newest
    cache.put("c", 4)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (3, None, 4)


def test_zero_ttl_disables() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=0)
    cache.put("a", 1)
    assert cache.get("a") is None
