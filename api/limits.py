"""Admission control for database work: a bounded number of request sessions per process.

Sync routes hop between threadpool threads (dependencies, endpoint, dependency exit) while their
session may hold a pooled connection. If more sessions were open than the pool has connections,
threads blocked on the pool could starve the holders of the thread they need to finish: a
deadlock broken only by the pool timeout. So a request takes a slot before its session opens and
gives it back after the session closed; there are fewer slots than connections, the spare one
serving the short single-hop transactions (authentication, readiness). Requests over the limit
wait on the event loop, holding neither a thread nor a connection. Routes that take no request
session (event streams, chat waits) are not limited here.

The slots stay within the kept pool (`db_pool_size`), not the overflow: the pool closes an
overflow connection as soon as it is returned, so sessions beyond the pool would open a new
database connection (a new PostgreSQL backend) every few requests under load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import Request


def slot_count(pool_size: int) -> int:
    return max(pool_size - 1, 1)


def database_slots(request: Request) -> anyio.Semaphore:
    """The process's slots: request sessions (`database_slot`) and read units (`api.deps.Reader`)
    share them."""
    state = request.app.state
    semaphore: anyio.Semaphore | None = getattr(state, "db_slots", None)
    if semaphore is None:  # created inside the running event loop, once (no await in between)
        semaphore = state.db_slots = anyio.Semaphore(state.db_slot_count)
    return semaphore


async def database_slot(request: Request) -> AsyncIterator[None]:
    async with database_slots(request):
        yield
