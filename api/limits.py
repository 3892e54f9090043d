"""Admission control: a bounded number of requests in flight per process, the rest wait here.

Sync routes hop between threadpool threads (dependencies, endpoint, dependency exit) while their
session may hold a pooled connection. If more requests entered than the pool has connections,
threads blocked on the pool could starve the holders of the thread they need to finish: a
deadlock broken only by the pool timeout. Admitting at most pool-capacity requests rules it out,
and queues the excess cheaply on the event loop instead of on database connections.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

# Liveness must answer even when the process is saturated.
EXEMPT_PATHS = frozenset({"/healthz"})
# Event streams stay open for hours and hold no database connection between their short reads
# (each takes its own session briefly): an admission slot each would let idle streams starve the API.
EXEMPT_SUFFIXES = ("/events/stream",)


class InFlightLimit:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self._semaphore: anyio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in EXEMPT_PATHS or path.endswith(EXEMPT_SUFFIXES):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:  # created inside the running event loop
            self._semaphore = anyio.Semaphore(self.limit)
        async with self._semaphore:
            await self.app(scope, receive, send)
