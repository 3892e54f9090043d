"""Admission control for database work: a bounded number of request sessions per process.

Sync routes hop between threadpool threads (dependencies, endpoint, dependency exit) while their
session may hold a pooled connection. If more sessions were open than the pool has connections,
threads blocked on the pool could starve the holders of the thread they need to finish: a
deadlock broken only by the pool timeout. So a request takes a slot before its session opens and
gives it back after the session closed; there are fewer slots than connections, the spare one
serving the short single-hop transactions (authentication, readiness). Single-hop reads
(`api.deps.Reader`) have slots of their own, sized to the CPUs (`read_slots`). Requests over the
limit wait on the event loop, holding neither a thread nor a connection. Routes that take no request
session (event streams, chat waits) are not limited here.

The slots stay within the kept pool (`db_pool_size`), not the overflow: the pool closes an
overflow connection as soon as it is returned, so sessions beyond the pool would open a new
database connection (a new PostgreSQL backend) every few requests under load.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
from fastapi import Request


def slot_count(pool_size: int) -> int:
    return max(pool_size - 1, 1)


def read_slot_count(configured: int | None) -> int:
    return configured or (os.cpu_count() or 1) + 1


def _semaphore(request: Request, name: str, count: int) -> anyio.Semaphore:
    state = request.app.state
    semaphore: anyio.Semaphore | None = getattr(state, name, None)
    if semaphore is None:  # created inside the running event loop, once (no await in between)
        semaphore = anyio.Semaphore(count)
        setattr(state, name, semaphore)
    return semaphore


def database_slots(request: Request) -> anyio.Semaphore:
    """The process's request-session slots (`database_slot`)."""
    return _semaphore(request, "db_slots", request.app.state.db_slot_count)


def read_slots(request: Request) -> anyio.Semaphore:
    """The process's read-unit slots (`api.deps.Reader`), apart from the session slots: a read
    holds its connection for one thread hop, never across a slow upload, so reads stay fast while
    sessions wait on clients. Few at once (`db_read_concurrency`): each is mostly Python work, and
    more threads than cores only convoy on the interpreter lock, which made the p99 of a one-row
    read three times its p50."""
    return _semaphore(request, "read_slots", request.app.state.read_slot_count)


async def database_slot(request: Request) -> AsyncIterator[None]:
    async with database_slots(request):
        yield
