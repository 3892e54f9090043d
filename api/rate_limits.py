"""Per-key rate limits on the expensive routes: run creation (`POST /v1/runs`) and inference
(`POST /v1/chat/completions`, `POST /v1/spot-checks`).

A fixed window per API key and kind: the first request of a key opens a window of
`MBPO_RATE_LIMIT_WINDOW_SECONDS` (a minute), and the requests beyond the kind's limit in that window
are refused with 429 `rate_limited` and `Retry-After` (the seconds left in the window). A limit of 0
means unlimited. Requests made with an admin-UI session count against the session's key.

With Redis (the broker) the counters live there, shared by every API process: one round trip per
limited request (a Lua script: INCR, PEXPIRE on the first hit, PTTL). Without Redis (embedded
mode, one API process) they live in the process.

Fail-open: when Redis does not answer, the request is allowed (a rate limit protects capacity; it
must not turn a Redis outage into refused work), a warning is logged, and Redis is left alone for
`REDIS_BACKOFF_SECONDS` so that each request does not wait for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol

from fastapi import Depends, Request

from api.deps import PrincipalDep
from api.errors import TooManyRequests
from infra.events.publish import redis_url
from infra.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "mbpo:rate:"
REDIS_TIMEOUT_SECONDS = 0.5  # a limiter slower than this is skipped, not waited for
REDIS_BACKOFF_SECONDS = 5.0

# KEYS[1]: the counter; ARGV[1]: the window in ms. Returns {count, ms left in the window}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


class LimitKind(StrEnum):
    runs = "runs"
    inference = "inference"


class _Windows(Protocol):
    async def hit(self, bucket: str, window: float) -> tuple[int, float]:
        """Count a request in `bucket`: (requests in the current window, seconds it has left)."""
        ...


class LocalWindows:
    """Counters in this process (embedded mode)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # bucket -> (window end, count)
        self._lock = threading.Lock()

    async def hit(self, bucket: str, window: float) -> tuple[int, float]:
        now = self.clock()
        with self._lock:
            end, count = self._windows.get(bucket, (0.0, 0))
            if end <= now:
                end, count = now + window, 0
                if len(self._windows) > 10_000:  # forget finished windows now and then
                    self._windows = {b: w for b, w in self._windows.items() if w[0] > now}
            self._windows[bucket] = (end, count + 1)
        return count + 1, end - now


class RedisWindows:
    """Counters in Redis, shared by every API process; one client per event loop."""

    def __init__(self, url: str, key_prefix: str):
        self.url = url
        self.key_prefix = key_prefix
        self._scripts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def _script(self) -> Callable[..., Awaitable[Any]]:
        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
            script = self._scripts[loop] = client.register_script(_HIT)
        return script  # type: ignore[no-any-return]

    async def hit(self, bucket: str, window: float) -> tuple[int, float]:
        count, ms_left = await self._script()(
            keys=[f"{self.key_prefix}{KEY_PREFIX}{bucket}"], args=[max(1, round(window * 1000))]
        )
        return int(count), int(ms_left) / 1000


class RateLimiter:
    """The limits of one API app (`app.state.rate_limiter`)."""

    def __init__(self, settings: Settings, windows: _Windows | None = None):
        self.window = settings.rate_limit_window_seconds
        self.limits = {
            LimitKind.runs: settings.rate_limit_runs_per_minute,
            LimitKind.inference: settings.rate_limit_inference_per_minute,
        }
        if windows is None:
            url = redis_url(settings)
            windows = RedisWindows(url, settings.broker_key_prefix) if url else LocalWindows()
        self.windows = windows
        self._skip_redis_until = 0.0

    async def check(self, kind: LimitKind, key_id: str) -> None:
        """Count one request of key `key_id`; 429 once it is over the limit of `kind`."""
        limit = self.limits[kind]
        if limit <= 0 or time.monotonic() < self._skip_redis_until:
            return
        try:
            count, seconds_left = await self.windows.hit(f"{kind}:{key_id}", self.window)
        except Exception as exc:  # fail open: see the module docstring
            self._skip_redis_until = time.monotonic() + REDIS_BACKOFF_SECONDS
            log.warning(
                "rate limiter unavailable (%s): requests are not limited for the next %.0f s",
                type(exc).__name__,
                REDIS_BACKOFF_SECONDS,
            )
            return
        if count > limit:
            retry_after = max(1, math.ceil(seconds_left))
            raise TooManyRequests(
                f"rate limit of {limit} {kind} requests per {self.window:g} s reached for this API key; "
                f"retry after {retry_after} s",
                retry_after=retry_after,
            )


def rate_limited(kind: LimitKind) -> Any:
    """A route dependency counting the caller's request against the limit of `kind`."""

    async def check(request: Request, principal: PrincipalDep) -> None:
        limiter: RateLimiter = request.app.state.rate_limiter
        await limiter.check(kind, principal.key_id)

    return Depends(check)


RunCreationLimit = rate_limited(LimitKind.runs)
InferenceLimit = rate_limited(LimitKind.inference)
