"""The job outbox: a job is written to `job_outbox` in the same transaction as the row it is about,
sent to the broker after the commit and deleted once sent. A job whose send failed (the broker
was down) keeps its row, and the relay sends it as soon as the broker answers again.

- `add(session, name, args)`: in the request's transaction (`infra.jobs.JobQueue.enqueue`).
- `send_jobs(session, send, ids)`: one short transaction that claims the given jobs (or the
  oldest ones), sends them in order, deletes the sent ones and records the error of the one that
  failed. The API calls it right after its commit with the ids it just wrote (`JobQueue.send`);
  the relay calls it for whatever is left.
- `Relay`: a daemon thread of every worker process that calls `send_jobs` every
  `MBPO_OUTBOX_RELAY_SECONDS` (worker.app starts it), needing only the database and the broker.

Concurrency: a claim is `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`, so
on PostgreSQL two senders never take the same row (the second skips it while the first holds it,
and finds it deleted afterwards). SQLite has one writer: the UPDATE takes the database's write lock
first, so the second sender waits and then finds the rows gone. A job is sent twice only when its
send reached the broker but the deletion did not commit (the database failed in between); the
consumers are idempotent (leases: a duplicate message finds the run or dataset already claimed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.db.models import OutboxJob
from infra.db.session import make_engine, make_session_factory
from infra.settings import Settings

log = logging.getLogger(__name__)

# Jobs claimed by one transaction; a larger backlog is sent by several in a row.
BATCH = 100
MAX_ERROR_CHARS = 500

SendJob = Callable[[str, list[str]], None]


def add(session: Session, name: str, args: Sequence[str]) -> int:
    """Write a job into the outbox in `session`'s transaction; its id."""
    row = OutboxJob(name=name, args=list(args))
    session.add(row)
    session.flush()
    return row.id


@dataclass(frozen=True)
class SendResult:
    sent: int = 0
    failed: int = 0  # 0 or 1: sending stops at the first failure (the broker is down)
    error: str | None = None

    def __add__(self, other: SendResult) -> SendResult:
        return SendResult(self.sent + other.sent, self.failed + other.failed, other.error or self.error)


def send_jobs(
    session: Session, send: SendJob, ids: Sequence[int] | None = None, limit: int = BATCH
) -> SendResult:
    """In a new transaction of `session` (which must have none in progress): claim the jobs `ids`
    (None: the oldest `limit` jobs) that no other sender holds, `send` them in order, delete the
    sent ones and commit; the first that fails keeps its row with its error and the rest of the
    batch is left untried. Exceptions of `send` are caught; database errors are not."""
    if ids is not None and not ids:
        return SendResult()
    claimable = select(OutboxJob.id).order_by(OutboxJob.id).limit(limit).with_for_update(skip_locked=True)
    if ids is not None:
        claimable = claimable.where(OutboxJob.id.in_(list(ids)))
    with session.begin():
        claimed = session.execute(
            update(OutboxJob)
            .where(OutboxJob.id.in_(claimable.scalar_subquery()))
            .values(attempts=OutboxJob.attempts + 1)
            .returning(OutboxJob.id, OutboxJob.name, OutboxJob.args)
            .execution_options(synchronize_session=False)
        ).all()
        jobs = sorted(claimed, key=lambda job: job.id)
        sent: list[int] = []
        for job in jobs:
            try:
                send(job.name, list(job.args))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                untried = [j.id for j in jobs[len(sent) + 1 :]]
                session.execute(
                    update(OutboxJob)
                    .where(OutboxJob.id == job.id)
                    .values(last_error=error)
                    .execution_options(synchronize_session=False)
                )
                if untried:  # claimed but not tried: their count of attempts stays true
                    session.execute(
                        update(OutboxJob)
                        .where(OutboxJob.id.in_(untried))
                        .values(attempts=OutboxJob.attempts - 1)
                        .execution_options(synchronize_session=False)
                    )
                _delete(session, sent)
                return SendResult(len(sent), 1, error)
            sent.append(job.id)
            log.info("enqueued %s%s", job.name, list(job.args))
        _delete(session, sent)
        return SendResult(len(sent))


def _delete(session: Session, ids: list[int]) -> None:
    if ids:
        session.execute(
            delete(OutboxJob).where(OutboxJob.id.in_(ids)).execution_options(synchronize_session=False)
        )


def relay_once(factory: sessionmaker[Session], send: SendJob) -> SendResult:
    """Send everything left in the outbox, batch after batch, until it is empty or a send fails."""
    total = SendResult()
    while True:
        with factory() as session:
            result = send_jobs(session, send)
        total += result
        if result.failed or result.sent < BATCH:
            return total


class Relay:
    """A daemon thread sending what is left in the outbox every `settings.outbox_relay_seconds`."""

    def __init__(self, settings: Settings, send: SendJob):
        self.settings = settings
        self.send = send
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._failing = False

    def _loop(self) -> None:
        while True:
            # A private engine per pass (as the sweeper): nothing pooled here is ever shared with
            # the worker's forked pool children.
            engine = make_engine(self.settings.sqlalchemy_url, pool_size=1, max_overflow=0)
            try:
                self._report(relay_once(make_session_factory(engine), self.send))
            except Exception as exc:
                self._report(SendResult(failed=1, error=f"database: {type(exc).__name__}: {exc}"))
            finally:
                engine.dispose()
            if self.stop.wait(self.settings.outbox_relay_seconds):
                return

    def _report(self, result: SendResult) -> None:
        """Log an outage once when it begins and once when it ends, not at every pass."""
        if result.failed and not self._failing:
            log.warning(
                "outbox relay: cannot send jobs (%s); retrying every %gs",
                result.error,
                self.settings.outbox_relay_seconds,
            )
        elif not result.failed and self._failing:
            log.info("outbox relay: sending again")
        if result.sent:
            log.info("outbox relay: sent %d job(s)", result.sent)
        self._failing = bool(result.failed)

    def start(self) -> None:
        self.thread.start()
