"""Riding through a database outage: retry a unit of work while the database is unreachable.

A PostgreSQL restart (a failover, a minor-version upgrade) drops every connection for a few
seconds. A long job must not lose its attempt to that: each of its database writes is one short
transaction, so it can simply be run again once the database answers. `ride_out(work)` retries
`work` on connection errors with exponential backoff for up to `budget_s` seconds, then raises
`DatabaseUnavailable`. Errors that are not about the connection (a constraint, a bug) are raised
at once. The first connection error invalidates the engine's pool, so the next try connects afresh
(infra.db.session).

A retried write whose commit reached the server but whose acknowledgement was lost would be
written twice; PostgreSQL only drops connections between statements on a restart (fast shutdown
rolls back what is in flight), so that window is the commit's own round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_PAUSE_S = 0.25
LONGEST_PAUSE_S = 4.0


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for longer than the job's outage budget."""


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached (not that the statement was wrong)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.TimeoutError)  # the pool had no connection to give


def ride_out(
    work: Callable[[], T],
    budget_s: float,
    what: str = "database write",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`work()`, retried while the database is unreachable, for up to `budget_s` seconds."""
    deadline = time.monotonic() + budget_s
    pause = FIRST_PAUSE_S
    failures = 0
    while True:
        try:
            result = work()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            failures += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"the database was unreachable for more than {budget_s:.0f}s ({what}): "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
            if failures == 1:
                log.warning("database unreachable (%s); retrying for up to %.0fs", what, budget_s)
            sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE_S)
            continue
        if failures:
            log.info("database reachable again after %d failed tries (%s)", failures, what)
        return result
