"""The database lease on PostgreSQL: one claimant wins, heartbeats extend, expiry frees."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.db.lease import Lease, expired_leases
from infra.db.models import Dataset, DatasetStatus


def _dataset(factory: sessionmaker[Session]) -> str:
    with factory.begin() as session:
        key, _ = create_api_key(session, user_name=f"u{time.monotonic_ns()}", key_name="k", admin=False)
        row = Dataset(owner_id=key.user_id, name="d", source="path", root_path="/x", manifest_name="m.jsonl")
        session.add(row)
        session.flush()
        return row.id


def _lease(factory: sessionmaker[Session], row_id: str, owner: str, ttl: float = 30) -> Lease:
    return Lease(factory, Dataset, row_id, owner, timedelta(seconds=ttl))


def test_exactly_one_of_many_concurrent_claims_wins(pg_factory: sessionmaker[Session]) -> None:
    row_id = _dataset(pg_factory)
    results: dict[str, bool] = {}
    barrier = threading.Barrier(8)

    def claim(owner: str) -> None:
        barrier.wait()
        results[owner] = _lease(pg_factory, row_id, owner).claim([DatasetStatus.validating])

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False] * 7 + [True]
    with pg_factory() as session:
        row = session.get(Dataset, row_id)
        assert row is not None and row.attempt == 1
        assert results[row.lease_owner or ""] is True


def test_expired_lease_can_be_taken_over_and_the_old_owner_cannot_write(
    pg_factory: sessionmaker[Session],
) -> None:
    row_id = _dataset(pg_factory)
    first = _lease(pg_factory, row_id, "dead-worker", ttl=0.2)
    assert first.claim([DatasetStatus.validating])
    second = _lease(pg_factory, row_id, "new-worker")
    assert not second.claim([DatasetStatus.validating])  # still held
    time.sleep(0.3)
    with pg_factory() as session:
        assert [r.id for r in expired_leases(session, Dataset, [DatasetStatus.validating])] == [row_id]
    assert second.claim([DatasetStatus.validating])
    assert not first.renew() and not first.finish(status=DatasetStatus.ready)
    assert second.finish(status=DatasetStatus.ready)
    with pg_factory() as session:
        row = session.get(Dataset, row_id)
        assert row is not None
        assert (row.status, row.attempt, row.lease_owner) == ("ready", 2, None)
    # Finished: nothing left to claim (a late duplicate message does nothing).
    assert not _lease(pg_factory, row_id, "late").claim([DatasetStatus.validating])


def test_keep_alive_heartbeats_and_reports_a_lost_lease(pg_factory: sessionmaker[Session]) -> None:
    row_id = _dataset(pg_factory)
    lease = _lease(pg_factory, row_id, "me", ttl=0.6)
    assert lease.claim([DatasetStatus.validating])
    with lease.keep_alive(interval=0.1) as lost:
        time.sleep(1.0)  # longer than the ttl: only the heartbeat keeps it
        assert not lost.is_set()
        assert not _lease(pg_factory, row_id, "thief").claim([DatasetStatus.validating])
        with pg_factory.begin() as session:  # an operator (or sweeper) takes the job away
            session.execute(update(Dataset).where(Dataset.id == row_id).values(lease_owner="other"))
        time.sleep(0.4)
        assert lost.is_set()
