"""Every dataset query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from api.auth.service import Principal
from infra.db.models import Dataset


class DatasetRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def id_by_root(self, owner_id: str, root_path: str) -> str | None:
        return self.session.scalar(
            select(Dataset.id).where(Dataset.owner_id == owner_id, Dataset.root_path == root_path)
        )

    def get_visible(self, dataset_id: str, principal: Principal) -> Dataset | None:
        stmt = select(Dataset).where(Dataset.id == dataset_id)
        if not principal.is_admin:
            stmt = stmt.where(Dataset.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def list_visible(self, principal: Principal, *, before: str | None, limit: int) -> Sequence[Dataset]:
        # The report can be large and the list does not show it.
        stmt = select(Dataset).options(defer(Dataset.report)).order_by(Dataset.id.desc()).limit(limit)
        if not principal.is_admin:
            stmt = stmt.where(Dataset.owner_id == principal.user_id)
        if before is not None:
            stmt = stmt.where(Dataset.id < before)
        return self.session.scalars(stmt).all()
