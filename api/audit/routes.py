"""/v1/audit: the audit log of admin actions (admin keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.audit import service
from api.audit.schemas import AuditEntryRead
from api.deps import PrincipalDep, SessionDep
from api.pagination import Page

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEntryRead])
def list_audit(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[AuditEntryRead]:
    """Admin actions, newest first: keys created and revoked, runs cancelled and resumed (by
    anyone), admin logins to the admin UI; each with its actor, action, target and time."""
    return service.audit_page(session, principal, cursor=cursor, limit=limit)
