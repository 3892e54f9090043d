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
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.base import utcnow
from api.db.models import ACTIVE_RUN_STATUSES, Run, RunStatus
from api.db.session import make_engine, make_session_factory
from api.events.publish import publish_events
from api.events.store import append_event, event_payload
from api.jobs import TaskName
from api.settings import Settings, get_settings

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


def _act(
    factory: sessionmaker[Session],
    settings: Settings,
    run_id: str,
    conditions: list[Any],
    values: dict[str, Any],
    event: tuple[str, str, dict[str, Any]] | None,
) -> bool:
    with factory() as session:
        result = session.execute(
            update(Run).where(Run.id == run_id, *conditions).values(**values),
            execution_options={"synchronize_session": False},
        )
        assert isinstance(result, CursorResult)
        if result.rowcount != 1:
            session.rollback()
            return False
        payloads = []
        if event is not None:
            type_, message, data = event
            level = "error" if type_ == "run_failed" else "warning"
            payloads.append(
                event_payload(append_event(session, run_id, type_, message, level=level, data=data))
            )
        session.commit()
    publish_events(settings, payloads)
    return True


def sweep_runs(
    factory: sessionmaker[Session], settings: Settings, send: Callable[[str], None]
) -> SweepResult:
    """One pass; `send(run_id)` enqueues the run's task."""
    now = utcnow()
    out = SweepResult()
    with factory() as session:
        expired = session.execute(
            select(Run.id, Run.status, Run.attempt, Run.max_attempts, Run.lease_owner).where(
                Run.status.in_(list(ACTIVE_RUN_STATUSES)),
                Run.lease_owner.is_not(None),
                Run.lease_expires_at < now,
            )
        ).all()
        lost_messages = session.execute(
            select(Run.id).where(
                Run.status.in_(list(ACTIVE_RUN_STATUSES - {RunStatus.cancelling})),
                Run.lease_owner.is_(None),
                Run.updated_at < now - timedelta(seconds=settings.lease_seconds),
            )
        ).all()
    free = [Run.lease_owner.is_(None)]
    for row in expired:
        same_lease = [Run.lease_owner == row.lease_owner, Run.lease_expires_at < now]
        lease_off = {"lease_owner": None, "lease_expires_at": None}
        if row.status == RunStatus.cancelling:
            if _act(
                factory,
                settings,
                row.id,
                same_lease,
                {**lease_off, "status": RunStatus.cancelled, "finished_at": now},
                ("run_cancelled", "run cancelled (its worker was gone)", {}),
            ):
                out.cancelled.append(row.id)
        elif row.attempt >= row.max_attempts:
            message = (
                f"the worker stopped responding on attempt {row.attempt} of {row.max_attempts} "
                "(lease expired); giving up"
            )
            values = {
                **lease_off,
                "status": RunStatus.failed,
                "finished_at": now,
                "eta_seconds": None,
                "error_code": "attempts_exhausted",
                "error_message": message,
            }
            if _act(
                factory,
                settings,
                row.id,
                same_lease,
                values,
                ("run_failed", message, {"error_code": "attempts_exhausted", "error_message": message}),
            ):
                out.failed.append(row.id)
        elif _act(
            factory,
            settings,
            row.id,
            same_lease,
            lease_off,
            (
                "run_requeued",
                f"worker lost during attempt {row.attempt}; re-queued",
                {"attempt": row.attempt, "max_attempts": row.max_attempts},
            ),
        ):
            send(row.id)
            out.requeued.append(row.id)
    for (run_id,) in lost_messages:
        # Touch first (conditionally), so concurrent sweepers do not both send.
        with factory() as session:
            status = session.scalar(select(Run.status).where(Run.id == run_id))
        threshold = (
            QUEUED_RESEND_AFTER if status == RunStatus.queued else timedelta(seconds=settings.lease_seconds)
        )
        if _act(
            factory, settings, run_id, [*free, Run.updated_at < now - threshold], {"updated_at": now}, None
        ):
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


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper
    if sender is None or _sweeper is not None:
        return
    app = sender.app

    def send(run_id: str) -> None:
        app.send_task(TaskName.execute_run.value, args=[run_id])

    _sweeper = Sweeper(get_settings(), send)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop.set()
