"""Request and response bodies of /v1/keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from infra.db.models import ApiKey


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user: str = Field(min_length=1, max_length=200, description="User the key belongs to (created if new).")
    name: str | None = Field(None, min_length=1, max_length=200, description="Label (default: the user).")
    # Strict: an admin grant is true or false, never 1, "yes" or "on".
    admin: StrictBool = Field(False, description="The key sees every user's resources and manages keys.")


class ApiKeyRead(BaseModel):
    """A key as stored: its public prefix, never the key."""

    id: str
    user_id: str
    user: str
    name: str
    prefix: str = Field(description="The key starts with mbpo_<prefix>_")
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKey) -> ApiKeyRead:
        return cls(
            id=row.id,
            user_id=row.user_id,
            user=row.user.name,
            name=row.name,
            prefix=row.prefix,
            admin=row.is_admin,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself, shown this once: only its hash is stored.")
