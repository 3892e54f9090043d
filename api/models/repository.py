"""Every base-model query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.service import Principal
from infra.db.models import BaseModelRecord


class ModelRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, model: BaseModelRecord) -> BaseModelRecord:
        self.session.add(model)
        self.session.flush()
        return model

    def id_by_path(self, owner_id: str, path: str) -> str | None:
        return self.session.scalar(
            select(BaseModelRecord.id).where(
                BaseModelRecord.owner_id == owner_id, BaseModelRecord.path == path
            )
        )

    def get_visible(self, model_id: str, principal: Principal) -> BaseModelRecord | None:
        stmt = select(BaseModelRecord).where(BaseModelRecord.id == model_id)
        if not principal.is_admin:
            stmt = stmt.where(BaseModelRecord.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def list_visible(
        self, principal: Principal, *, before: str | None, limit: int
    ) -> Sequence[BaseModelRecord]:
        stmt = select(BaseModelRecord).order_by(BaseModelRecord.id.desc()).limit(limit)
        if not principal.is_admin:
            stmt = stmt.where(BaseModelRecord.owner_id == principal.user_id)
        if before is not None:
            stmt = stmt.where(BaseModelRecord.id < before)
        return self.session.scalars(stmt).all()
