"""Every spot-check query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.service import Principal
from infra.db.models import SpotCheckRecord


class SpotCheckRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, record: SpotCheckRecord) -> SpotCheckRecord:
        self.session.add(record)
        self.session.flush()
        return record

    def get_visible(self, spot_check_id: str, principal: Principal) -> SpotCheckRecord | None:
        stmt = select(SpotCheckRecord).where(SpotCheckRecord.id == spot_check_id)
        if not principal.is_admin:
            stmt = stmt.where(SpotCheckRecord.owner_id == principal.user_id)
        return self.session.scalar(stmt)

    def list_visible(
        self, principal: Principal, *, before: str | None, limit: int
    ) -> Sequence[SpotCheckRecord]:
        stmt = select(SpotCheckRecord).order_by(SpotCheckRecord.id.desc()).limit(limit)
        if not principal.is_admin:
            stmt = stmt.where(SpotCheckRecord.owner_id == principal.user_id)
        if before is not None:
            stmt = stmt.where(SpotCheckRecord.id < before)
        return self.session.scalars(stmt).all()
