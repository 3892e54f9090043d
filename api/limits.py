"""Admission control for database work: a bounded number of request sessions per process.

Sync routes hop between threadpool threads (dependencies, endpoint, dependency exit) while their
session may hold a pooled connection. If more sessions were open than the pool has connections,
threads blocked on the pool could starve the holders of the thread they need to finish: a
deadlock broken only by the pool timeout. So a request takes a slot before its session opens and
gives it back after the session closed; there are fewer slots than connections, the spare one
serving the short single-hop transactions (authentication, readiness). Requests over the limit
wait on the event loop, holding neither a thread nor a connection. Routes that take no request
session (event streams, chat waits) are not limited here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import Request


def slot_count(pool_size: int, max_overflow: int) -> int:
    return max(pool_size + max_overflow - 1, 1)


async def database_slot(request: Request) -> AsyncIterator[None]:
    state = request.app.state
    semaphore: anyio.Semaphore | None = getattr(state, "db_slots", None)
    if semaphore is None:  # created inside the running event loop, once (no await in between)
        semaphore = state.db_slots = anyio.Semaphore(state.db_slot_count)
    async with semaphore:
        yield
