"""The run sweeper on PostgreSQL: expired leases are re-queued until max_attempts, then failed with
a reason; a dead `cancelling` run ends cancelled; live leases and finished runs are left alone; a
second sweeper acting on the same expiry does nothing."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow
from infra.db.models import Run
from infra.runs.lifecycle import RunStatus
from infra.settings import Settings
from tests.helpers.rows import make_run, owner_and_model, run_state
from worker.sweeper import sweep_runs


def test_sweeper_requeues_fails_and_cancels_dead_runs(
    pg_factory: sessionmaker[Session], committed_db: str
) -> None:
    settings = Settings(
        env="test", database_url=committed_db, broker_url="redis://127.0.0.1:1/0", lease_seconds=30
    )
    owner, model = owner_and_model(pg_factory)
    past, future = utcnow() - timedelta(seconds=5), utcnow() + timedelta(minutes=5)
    dead = dict(lease_owner="w-dead", lease_expires_at=past)
    requeue = make_run(
        pg_factory, owner, model, status=RunStatus.training, stage="training", attempt=1, **dead
    )
    exhausted = make_run(
        pg_factory, owner, model, status=RunStatus.mining, stage="mining", attempt=3, max_attempts=3, **dead
    )
    cancelling = make_run(
        pg_factory, owner, model, status=RunStatus.cancelling, stage="training", attempt=1, **dead
    )
    alive = make_run(
        pg_factory,
        owner,
        model,
        status=RunStatus.training,
        attempt=1,
        lease_owner="w-live",
        lease_expires_at=future,
    )
    finished = make_run(pg_factory, owner, model, status=RunStatus.succeeded, attempt=1)

    sent: list[str] = []
    result = sweep_runs(pg_factory, settings, sent.append)

    assert result.requeued == [requeue] and sent == [requeue]
    run, types = run_state(pg_factory, requeue)
    assert run.status == RunStatus.training and run.lease_owner is None and types == ["run_requeued"]

    assert result.failed == [exhausted]
    run, types = run_state(pg_factory, exhausted)
    assert run.status == RunStatus.failed and run.error_code == "attempts_exhausted"
    assert run.error_message and "attempt 3 of 3" in run.error_message
    assert run.finished_at is not None and types == ["run_failed"]

    assert result.cancelled == [cancelling]
    assert run_state(pg_factory, cancelling)[0].status == RunStatus.cancelled

    for untouched in (alive, finished):
        run, types = run_state(pg_factory, untouched)
        assert types == [] and run.status in {RunStatus.training, RunStatus.succeeded}
    assert run_state(pg_factory, alive)[0].lease_owner == "w-live"

    # A second pass (another worker's sweeper) finds nothing left to do for these runs.
    again: list[str] = []
    second = sweep_runs(pg_factory, settings, again.append)
    assert requeue not in second.requeued and again == []


def test_a_stalled_run_stops_renewing_its_lease(pg_factory: sessionmaker[Session]) -> None:
    """The heartbeat outlives a hung run; it must not keep the lease alive without progress."""
    from worker.runs import RunLease

    owner, model = owner_and_model(pg_factory)
    run_id = make_run(pg_factory, owner, model)
    lease = RunLease(pg_factory, Run, run_id, "w-1", timedelta(seconds=30), stall_seconds=0.3)
    assert lease.claim([RunStatus.queued])
    assert lease.renew()  # a heartbeat soon after activity
    time.sleep(0.4)
    assert not lease.renew()  # a heartbeat after the stall limit: refused
    assert lease.renew(progress=0.5)  # progress is activity
    assert lease.renew()
