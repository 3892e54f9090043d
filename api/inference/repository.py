"""Every query inference needs: the base models, runs and checkpoints a principal may use."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.service import Principal
from infra.db.models import BaseModelRecord, Checkpoint, Run


class InferenceModelRepository:
    def __init__(self, session: Session):
        self.session = session

    def base_model(self, model_id: str, principal: Principal) -> BaseModelRecord | None:
        stmt = select(BaseModelRecord).where(BaseModelRecord.id == model_id)
        if not principal.is_admin:
            stmt = stmt.where(BaseModelRecord.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def base_model_by_id(self, model_id: str) -> BaseModelRecord | None:
        return self.session.get(BaseModelRecord, model_id)

    def run(self, run_id: str, principal: Principal) -> Run | None:
        stmt = select(Run).where(Run.id == run_id)
        if not principal.is_admin:
            stmt = stmt.where(Run.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def checkpoint(self, run_id: str, step: int | None) -> Checkpoint | None:
        """The complete checkpoint at `step`, or the newest complete one."""
        stmt = select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.complete.is_(True))
        if step is not None:
            return self.session.scalar(stmt.where(Checkpoint.step == step))
        return self.session.scalar(stmt.order_by(Checkpoint.step.desc()).limit(1))

    def base_models(self, principal: Principal) -> Sequence[BaseModelRecord]:
        stmt = select(BaseModelRecord).order_by(BaseModelRecord.id)
        if not principal.is_admin:
            stmt = stmt.where(BaseModelRecord.owner_id == principal.user_id)
        return self.session.scalars(stmt).all()

    def checkpoints(self, principal: Principal) -> Sequence[tuple[Run, Checkpoint]]:
        """Complete checkpoints of the visible runs, by run then step."""
        stmt = (
            select(Run, Checkpoint)
            .join(Checkpoint, Checkpoint.run_id == Run.id)
            .where(Checkpoint.complete.is_(True))
            .order_by(Run.id, Checkpoint.step)
        )
        if not principal.is_admin:
            stmt = stmt.where(Run.owner_id == principal.user_id)
        return [(run, ckpt) for run, ckpt in self.session.execute(stmt).tuples()]
