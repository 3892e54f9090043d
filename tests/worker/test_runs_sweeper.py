"""The run sweeper on PostgreSQL: expired leases are re-queued until max_attempts, then failed with
a reason; a dead `cancelling` run ends cancelled; live leases and finished runs are left alone; a
second sweeper acting on the same expiry does nothing."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.db.base import utcnow
from api.db.models import BaseModelRecord, Run, RunEvent, RunStatus, User
from api.settings import Settings
from worker.sweeper import sweep_runs


def _owner_and_model(factory: sessionmaker[Session]) -> tuple[str, str]:
    with factory.begin() as session:
        user = User(name=f"sweeper-{utcnow().timestamp()}")
        session.add(user)
        session.flush()
        model = BaseModelRecord(
            owner_id=user.id, name="m", path="/m", family="qwen2_vl", model_type="qwen2_vl", param_count=1
        )
        session.add(model)
        session.flush()
        return user.id, model.id


def _run(factory: sessionmaker[Session], owner: str, model: str, **values: Any) -> str:
    with factory.begin() as session:
        run = Run(
            owner_id=owner, base_model_id=model, name="r", config={}, stage_progress={}, latest_metrics={}
        )
        for key, value in values.items():
            setattr(run, key, value)
        session.add(run)
        session.flush()
        return run.id


def _state(factory: sessionmaker[Session], run_id: str) -> tuple[Run, list[str]]:
    with factory() as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        types = list(
            session.scalars(select(RunEvent.type).where(RunEvent.run_id == run_id).order_by(RunEvent.seq))
        )
        return run, types


def test_sweeper_requeues_fails_and_cancels_dead_runs(
    pg_factory: sessionmaker[Session], committed_db: str
) -> None:
    settings = Settings(
        env="test", database_url=committed_db, broker_url="redis://127.0.0.1:1/0", lease_seconds=30
    )
    owner, model = _owner_and_model(pg_factory)
    past, future = utcnow() - timedelta(seconds=5), utcnow() + timedelta(minutes=5)
    dead = dict(lease_owner="w-dead", lease_expires_at=past)
    requeue = _run(pg_factory, owner, model, status=RunStatus.training, stage="training", attempt=1, **dead)
    exhausted = _run(
        pg_factory, owner, model, status=RunStatus.mining, stage="mining", attempt=3, max_attempts=3, **dead
    )
    cancelling = _run(
        pg_factory, owner, model, status=RunStatus.cancelling, stage="training", attempt=1, **dead
    )
    alive = _run(
        pg_factory,
        owner,
        model,
        status=RunStatus.training,
        attempt=1,
        lease_owner="w-live",
        lease_expires_at=future,
    )
    finished = _run(pg_factory, owner, model, status=RunStatus.succeeded, attempt=1)

    sent: list[str] = []
    result = sweep_runs(pg_factory, settings, sent.append)

    assert result.requeued == [requeue] and sent == [requeue]
    run, types = _state(pg_factory, requeue)
    assert run.status == RunStatus.training and run.lease_owner is None and types == ["run_requeued"]

    assert result.failed == [exhausted]
    run, types = _state(pg_factory, exhausted)
    assert run.status == RunStatus.failed and run.error_code == "attempts_exhausted"
    assert run.error_message and "attempt 3 of 3" in run.error_message
    assert run.finished_at is not None and types == ["run_failed"]

    assert result.cancelled == [cancelling]
    assert _state(pg_factory, cancelling)[0].status == RunStatus.cancelled

    for untouched in (alive, finished):
        run, types = _state(pg_factory, untouched)
        assert types == [] and run.status in {RunStatus.training, RunStatus.succeeded}
    assert _state(pg_factory, alive)[0].lease_owner == "w-live"

    # A second pass (another worker's sweeper) finds nothing left to do for these runs.
    again: list[str] = []
    second = sweep_runs(pg_factory, settings, again.append)
    assert requeue not in second.requeued and again == []


def test_a_stalled_run_stops_renewing_its_lease(pg_factory: sessionmaker[Session]) -> None:
    """The heartbeat outlives a hung run; it must not keep the lease alive without progress."""
    from worker.runs import RunLease

    owner, model = _owner_and_model(pg_factory)
    run_id = _run(pg_factory, owner, model)
    lease = RunLease(pg_factory, Run, run_id, "w-1", timedelta(seconds=30), stall_seconds=0.3)
    assert lease.claim([RunStatus.queued])
    assert lease.renew()  # a heartbeat soon after activity
    time.sleep(0.4)
    assert not lease.renew()  # a heartbeat after the stall limit: refused
    assert lease.renew(progress=0.5)  # progress is activity
    assert lease.renew()
