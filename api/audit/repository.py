"""Queries on the audit log."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.db.models import AuditEntry, User


class AuditRepository:
    def __init__(self, session: Session):
        self.session = session

    def newest(self, *, before: int | None, limit: int) -> Sequence[tuple[AuditEntry, str | None]]:
        """Entries newest first with their actor's user name; `before`: only entries older than that id."""
        stmt = (
            select(AuditEntry, User.name)
            .outerjoin(User, User.id == AuditEntry.actor_user_id)
            .order_by(AuditEntry.id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(AuditEntry.id < before)
        return self.session.execute(stmt).tuples().all()
