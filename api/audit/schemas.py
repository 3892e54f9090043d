"""Response bodies of /v1/audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from infra.db.models import AuditEntry


class AuditEntryRead(BaseModel):
    id: int
    at: datetime
    action: str = Field(description="key.create, key.revoke, run.cancel, run.resume, admin.login")
    actor_user_id: str | None = Field(description="Who acted; null: the command line (mbpo keys create).")
    actor_user: str | None = Field(description="The actor's user name.")
    actor_key_id: str | None = Field(description="The API key the actor used (its id, never the key).")
    target_kind: str = Field(description="api_key or run")
    target_id: str
    detail: dict[str, Any] = Field(description="What changed, e.g. a run's status before and after.")

    @classmethod
    def from_row(cls, entry: AuditEntry, actor_user: str | None) -> AuditEntryRead:
        return cls(
            id=entry.id,
            at=entry.at,
            action=entry.action,
            actor_user_id=entry.actor_user_id,
            actor_user=actor_user,
            actor_key_id=entry.actor_key_id,
            target_kind=entry.target_kind,
            target_id=entry.target_id,
            detail=entry.detail,
        )
