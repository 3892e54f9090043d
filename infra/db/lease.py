"""Database leases: a job (dataset validation now, runs later) is owned by one worker at a time.

A worker *claims* a row with one atomic `UPDATE ... WHERE status IN (...) AND lease is free or
expired`; exactly one claimant sees rowcount 1, so a redelivered or duplicated Celery message
cannot run the same job twice. The owner renews the lease by heartbeat; if it dies, the lease
expires and a sweeper (or a redelivery) may claim the row again, with `attempt` incremented.
Every write of the job's result is conditioned on still holding the lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A lease on row `row_id` of `model` (a mapped class with `id`, `status` and LeaseMixin)."""

    session_factory: sessionmaker[Session]
    model: Any
    row_id: str
    owner: str
    ttl: timedelta

    def _update(self, *conditions: Any, **values: Any) -> bool:
        stmt = update(self.model).where(self.model.id == self.row_id, *conditions).values(**values)
        with self.session_factory.begin() as session:
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            assert isinstance(result, CursorResult)
            return result.rowcount == 1

    def claim(self, statuses: Collection[str], **values: Any) -> bool:
        """Take the lease if the row is in one of `statuses` and nobody holds a live lease.

        `values` are written in the same statement (e.g. a new status). Returns False when another
        worker holds it or the row moved on (already done, cancelled, deleted)."""
        now = utcnow()
        m = self.model
        return self._update(
            m.status.in_(list(statuses)),
            or_(m.lease_owner.is_(None), m.lease_expires_at < now),
            lease_owner=self.owner,
            lease_expires_at=now + self.ttl,
            heartbeat_at=now,
            attempt=m.attempt + 1,
            **values,
        )

    def renew(self, **values: Any) -> bool:
        """Heartbeat: extend the lease (and write `values`, e.g. progress). False = lease lost."""
        now = utcnow()
        return self._update(
            self.model.lease_owner == self.owner,
            lease_expires_at=now + self.ttl,
            heartbeat_at=now,
            **values,
        )

    def finish(self, **values: Any) -> bool:
        """Write the final `values` and release the lease, only if this worker still holds it."""
        return self._update(
            self.model.lease_owner == self.owner, lease_owner=None, lease_expires_at=None, **values
        )

    @contextmanager
    def keep_alive(self, interval: float | None = None) -> Iterator[threading.Event]:
        """Heartbeat from a background thread while the body runs.

        Yields an Event that is set when the lease was lost (another worker took over); long jobs
        check it between steps and stop without writing results."""
        lost = threading.Event()
        stop = threading.Event()
        period = interval if interval is not None else max(self.ttl.total_seconds() / 3, 0.5)

        def beat() -> None:
            while not stop.wait(period):
                try:
                    if not self.renew():
                        lost.set()
                        return
                except Exception:  # a transient DB error must not kill the job; the next beat retries
                    log.exception("lease heartbeat failed for %s", self.row_id)

        thread = threading.Thread(target=beat, name=f"lease-{self.row_id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()


def expired_leases(
    session: Session, model: Any, statuses: Collection[str], now: datetime | None = None
) -> list[Any]:
    """Rows in `statuses` whose lease expired (their worker died): the sweeper's input."""
    stmt = select(model).where(
        model.status.in_(list(statuses)),
        model.lease_owner.is_not(None),
        model.lease_expires_at < (now or utcnow()),
    )
    return list(session.scalars(stmt))


def unclaimed(
    session: Session, model: Any, statuses: Collection[str], *, created_before: datetime
) -> list[str]:
    """Ids of rows in `statuses`, created before `created_before`, that no worker holds (free or
    expired lease): their message was lost or their worker died."""
    now = utcnow()
    stmt = select(model.id).where(
        model.status.in_(list(statuses)),
        model.created_at < created_before,
        or_(model.lease_owner.is_(None), model.lease_expires_at < now),
    )
    return list(session.scalars(stmt))
