"""The run sweeper: finds runs whose worker died (lease expired) and re-queues them, up to
`max_attempts`, then fails them with a reason; a run that was `cancelling` becomes `cancelled`.

It runs in a thread of every worker process (started when the worker is ready), so it also works
in embedded `mbpo serve`, whose one local worker starts it. Several sweepers are safe: each change
is a conditional UPDATE on the exact lease it saw expire, so only one of them acts on a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow
from infra.db.lease import expired_leases
from infra.db.models import Run, RunEvent
from infra.db.session import make_engine, make_session_factory
from infra.events.publish import commit_and_publish
from infra.runs.lifecycle import ACTIVE, RunStatus, release_for_retry, transition, update_run
from infra.runs.repository import ExecutionRepository
from infra.settings import Settings

log = logging.getLogger(__name__)

# A queued run nobody picked up for this long may have lost its message (the API could not reach
# the broker after the commit): send it again. Duplicates are harmless (the lease), only wasteful.
QUEUED_RESEND_AFTER = timedelta(minutes=15)


@dataclass
class SweepResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def _commit(
    factory: sessionmaker[Session],
    settings: Settings,
    change: Callable[..., RunEvent | None],
    *args: Any,
    **kwargs: Any,
) -> bool:
    """`change(session, *args, **kwargs)` (a conditional change plus its event) in one transaction,
    committed and published; True when it matched."""
    with factory() as session:
        event = change(session, *args, **kwargs)
        if event is None:
            session.rollback()
            return False
        commit_and_publish(session, settings, [event])
    return True


def _touch(factory: sessionmaker[Session], run_id: str, threshold: timedelta, now: datetime) -> bool:
    """Mark an unheld run as handled now (only if nobody touched it since `threshold`), so that
    concurrent sweepers do not both re-send its message."""
    with factory.begin() as session:
        return update_run(
            session,
            run_id,
            [Run.lease_owner.is_(None), Run.updated_at < now - threshold],
            {"updated_at": now},
        )


def sweep_runs(
    factory: sessionmaker[Session], settings: Settings, send: Callable[[str], None]
) -> SweepResult:
    """One pass; `send(run_id)` enqueues the run's task."""
    now = utcnow()
    lease_ttl = timedelta(seconds=settings.lease_seconds)
    out = SweepResult()
    with factory() as session:
        expired = [
            (r.id, r.status, r.attempt, r.max_attempts, r.lease_owner)
            for r in expired_leases(session, Run, ACTIVE)
        ]
        lost_messages = ExecutionRepository(session).unleased_since(
            ACTIVE - {RunStatus.cancelling}, now - lease_ttl
        )
    lease_off = {"lease_owner": None, "lease_expires_at": None}
    for run_id, status, attempt, max_attempts, owner in expired:
        same_lease = [Run.lease_owner == owner, Run.lease_expires_at < now]
        if status == RunStatus.cancelling:
            if _commit(
                factory,
                settings,
                transition,
                run_id,
                RunStatus.cancelled,
                sources={RunStatus.cancelling},
                when=same_lease,
                values={**lease_off, "finished_at": now},
                message="run cancelled (its worker was gone)",
                level="warning",
            ):
                out.cancelled.append(run_id)
        elif attempt >= max_attempts:
            message = (
                f"the worker stopped responding on attempt {attempt} of {max_attempts} "
                "(lease expired); giving up"
            )
            failure = {"error_code": "attempts_exhausted", "error_message": message}
            if _commit(
                factory,
                settings,
                transition,
                run_id,
                RunStatus.failed,
                sources=ACTIVE,
                when=same_lease,
                values={**lease_off, "finished_at": now, "eta_seconds": None, **failure},
                message=message,
                data=failure,
            ):
                out.failed.append(run_id)
        elif _commit(
            factory,
            settings,
            release_for_retry,
            run_id,
            same_lease,
            attempt=attempt,
            max_attempts=max_attempts,
        ):
            send(run_id)
            out.requeued.append(run_id)
    for run_id in lost_messages:
        with factory() as session:
            status = ExecutionRepository(session).status(run_id)
        threshold = QUEUED_RESEND_AFTER if status == RunStatus.queued else lease_ttl
        if _touch(factory, run_id, threshold, now):
            send(run_id)
            out.resent.append(run_id)
    if out.requeued or out.failed or out.cancelled or out.resent:
        log.info("run sweep: %s", out)
    return out


class Sweeper:
    """A daemon thread running `sweep_runs` every `settings.sweep_seconds`."""

    def __init__(self, settings: Settings, send: Callable[[str], None]):
        self.settings = settings
        self.send = send
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="run-sweeper", daemon=True)

    def _loop(self) -> None:
        while True:
            # A private engine per pass: nothing pooled here is ever shared with forked pool children.
            engine = make_engine(self.settings.sqlalchemy_url, pool_size=1, max_overflow=0)
            try:
                sweep_runs(make_session_factory(engine), self.settings, self.send)
            except Exception:
                log.exception("run sweep failed; retrying next interval")
            finally:
                engine.dispose()
            if self.stop.wait(self.settings.sweep_seconds):
                return

    def start(self) -> None:
        self.thread.start()
