"""The audit log of admin actions (table `audit_log`, `infra.db.models.AuditEntry`): who did what to
which thing, and when.

An entry is added to the session of the action it records, so it commits or rolls back with the
action: the log holds an entry exactly for each action that happened. Entries are append-only and
never hold a secret: an API key appears by its id and public prefix, never in clear. Readers: the
admins' `GET /v1/audit` and `/admin/audit` (`api.audit`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from infra.db.models import AuditEntry


class AuditAction(StrEnum):
    key_create = "key.create"  # an API key was created (admin UI, REST, or `mbpo keys create`)
    key_revoke = "key.revoke"
    run_cancel = "run.cancel"  # by anyone: the owner or an admin
    run_resume = "run.resume"
    admin_login = "admin.login"  # an admin key signed in to the admin UI


def record_audit(
    session: Session,
    action: AuditAction,
    *,
    target_kind: str,
    target_id: str,
    actor_user_id: str | None,
    actor_key_id: str | None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an entry to the session's transaction. No actor (both None): the command line."""
    entry = AuditEntry(
        action=action.value,
        target_kind=target_kind,
        target_id=target_id,
        actor_user_id=actor_user_id,
        actor_key_id=actor_key_id,
        detail=detail or {},
    )
    session.add(entry)
    return entry
