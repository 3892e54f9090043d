"""The run queries of the execution side: the worker that runs a run, the sweeper that recovers
it and the metrics that count runs by status (infra.metrics). (The web side's run queries,
filtered by who is asking, are `api.runs.repository`; status changes are
`infra.runs.lifecycle.transition`.)"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy import Row, delete, func, select
from sqlalchemy.orm import Session

from infra.db.models import Artefact, BaseModelRecord, Checkpoint, Dataset, Run, RunMetric


class ExecutionRepository:
    def __init__(self, session: Session):
        self.session = session

    # ---- the run and what it reads ------------------------------------------------------------

    def run(self, run_id: str) -> Run | None:
        return self.session.get(Run, run_id)

    def model(self, model_id: str) -> BaseModelRecord | None:
        return self.session.get(BaseModelRecord, model_id)

    def dataset(self, dataset_id: str) -> Dataset | None:
        return self.session.get(Dataset, dataset_id)

    def status_and_owner(self, run_id: str) -> Row[str, str | None] | None:
        """(status, lease_owner) of the run, read fresh: the cancel flag and who holds the lease."""
        return self.session.execute(select(Run.status, Run.lease_owner).where(Run.id == run_id)).one_or_none()

    def status(self, run_id: str) -> str | None:
        return self.session.scalar(select(Run.status).where(Run.id == run_id))

    # ---- metrics, artefacts, checkpoints -------------------------------------------------------

    def last_recorded_step(self, run_id: str, stage: str) -> int:
        """Highest step with metrics recorded for `stage` (by any attempt), 0 if none."""
        stmt = select(func.max(RunMetric.step)).where(RunMetric.run_id == run_id, RunMetric.stage == stage)
        return self.session.scalar(stmt) or 0

    def add_metrics(self, run_id: str, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        self.session.add_all(
            RunMetric(run_id=run_id, stage=stage, name=name, step=step, value=value)
            for name, value in metrics.items()
        )

    def artefact_at(self, run_id: str, path: str) -> Artefact | None:
        return self.session.scalar(select(Artefact).where(Artefact.run_id == run_id, Artefact.path == path))

    def add(self, row: Artefact | Checkpoint) -> None:
        self.session.add(row)

    def checkpoints_by_step(self, run_id: str) -> dict[int, Checkpoint]:
        rows = self.session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))
        return {row.step: row for row in rows}

    def delete_checkpoints(self, run_id: str, steps: Collection[int]) -> None:
        self.session.execute(
            delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step.in_(list(steps)))
        )

    # ---- what the sweeper and the metrics look for -----------------------------------------------

    def runs_by_status(self) -> dict[str, int]:
        """How many runs are in each status (those with none are absent)."""
        rows = self.session.execute(select(Run.status, func.count()).group_by(Run.status))
        return {status: count for status, count in rows.tuples()}

    def unleased_since(self, statuses: Collection[str], before: datetime) -> Sequence[str]:
        """Runs in `statuses` that nobody holds and nobody touched since `before`: their message
        may be lost (the API could not reach the broker after its commit)."""
        stmt = select(Run.id).where(
            Run.status.in_(list(statuses)), Run.lease_owner.is_(None), Run.updated_at < before
        )
        return self.session.scalars(stmt).all()
