"""The web side's run queries, filtered by who asks (events: infra.events.store; status changes:
infra.runs.lifecycle; the worker's queries: infra.runs.repository)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from api.auth.service import Principal
from infra.db.models import Artefact, Checkpoint, Run, RunMetric


class RunRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, run: Run) -> Run:
        self.session.add(run)
        self.session.flush()
        return run

    def get_visible(self, run_id: str, principal: Principal) -> Run | None:
        stmt = select(Run).where(Run.id == run_id)
        if not principal.is_admin:
            stmt = stmt.where(Run.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def status_and_event_seq(self, run_id: str) -> Row[str, int] | None:
        return self.session.execute(select(Run.status, Run.event_seq).where(Run.id == run_id)).one_or_none()

    def get_by_idempotency_key(self, owner_id: str, key: str) -> Run | None:
        return self.session.scalar(select(Run).where(Run.owner_id == owner_id, Run.idempotency_key == key))

    def list_visible(
        self, principal: Principal, *, status: Sequence[str] | None, before: str | None, limit: int
    ) -> Sequence[Run]:
        stmt = select(Run).order_by(Run.id.desc()).limit(limit)
        if not principal.is_admin:
            stmt = stmt.where(Run.owner_id == principal.user_id)
        if status:
            stmt = stmt.where(Run.status.in_(list(status)))
        if before is not None:
            stmt = stmt.where(Run.id < before)
        return self.session.scalars(stmt).all()

    def metrics(self, run_id: str) -> Sequence[RunMetric]:
        stmt = select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.name, RunMetric.step)
        return self.session.scalars(stmt).all()

    def checkpoints(self, run_id: str) -> Sequence[Checkpoint]:
        stmt = (
            select(Checkpoint)
            .where(Checkpoint.run_id == run_id, Checkpoint.complete.is_(True))
            .order_by(Checkpoint.step)
        )
        return self.session.scalars(stmt).all()

    def checkpoint(self, run_id: str, step: int) -> Checkpoint | None:
        return self.session.scalar(
            select(Checkpoint).where(
                Checkpoint.run_id == run_id, Checkpoint.step == step, Checkpoint.complete.is_(True)
            )
        )

    def artefacts(self, run_id: str) -> Sequence[Artefact]:
        return self.session.scalars(
            select(Artefact).where(Artefact.run_id == run_id).order_by(Artefact.created_at)
        ).all()

    def artefact_of_kind(self, run_id: str, kind: str) -> Artefact | None:
        return self.session.scalar(select(Artefact).where(Artefact.run_id == run_id, Artefact.kind == kind))

    def artefact(self, artefact_id: str) -> Artefact | None:
        return self.session.get(Artefact, artefact_id)
