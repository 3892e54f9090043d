"""/v1/models: register and read base models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.models import service
from api.models.schemas import ModelCreate, ModelRead
from api.pagination import Page, decode_cursor, encode_cursor

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, response_model=ModelRead)
def register_model(
    body: ModelCreate, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> ModelRead:
    """Register a local Hugging Face model directory (inside MBPO_DATA_ROOTS) as a base model."""
    return ModelRead.model_validate(service.register_model(session, settings, principal, body))


@router.get("", response_model=Page[ModelRead])
def list_models(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> Page[ModelRead]:
    rows = service.list_models(session, principal, before=decode_cursor(cursor), limit=limit + 1)
    page = [ModelRead.model_validate(r) for r in rows[:limit]]
    return Page[ModelRead](data=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)


@router.get("/{model_id}", response_model=ModelRead)
def get_model(model_id: str, session: SessionDep, principal: PrincipalDep) -> ModelRead:
    return ModelRead.model_validate(service.get_model(session, principal, model_id))
