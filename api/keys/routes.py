"""/v1/keys: API keys for admins (create, list, revoke), the REST twin of the admin UI's page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from api.auth import service
from api.auth.revocation import revoke_key
from api.deps import JobQueueDep, PrincipalDep, RevocationsDep, SessionDep
from api.errors import error_responses
from api.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from api.pagination import Page, decode_cursor, encode_cursor

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=error_responses(400, 413))
def create_key(body: ApiKeyCreate, session: SessionDep, principal: PrincipalDep) -> ApiKeyCreated:
    """Create a key (admin keys only). The response holds the key once; only its hash is stored."""
    row, key = service.issue_api_key(
        session, principal, user_name=body.user, key_name=body.name or body.user, admin=body.admin
    )
    return ApiKeyCreated(**ApiKeyRead.from_row(row).model_dump(), key=key)


@router.get("", response_model=Page[ApiKeyRead])
def list_keys(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[ApiKeyRead]:
    """Every key, newest first (admin keys only)."""
    rows = service.list_api_keys(session, principal, before=decode_cursor(cursor), limit=limit + 1)
    page = [ApiKeyRead.from_row(r) for r in rows[:limit]]
    return Page[ApiKeyRead](data=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)


@router.post("/{key_id}/revoke", response_model=ApiKeyRead, responses=error_responses(404, 409, 413))
def revoke(
    key_id: Annotated[str, PathParam(max_length=40)],
    session: SessionDep,
    principal: PrincipalDep,
    jobs: JobQueueDep,
    revocations: RevocationsDep,
) -> ApiKeyRead:
    """Revoke a key (admin keys only; a key cannot revoke itself). When this returns, every API
    process refuses the key (docs/production.md); revoking twice changes nothing."""
    return ApiKeyRead.from_row(revoke_key(session, jobs, revocations, principal, key_id))
