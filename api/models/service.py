"""Base-model registration: inspect the directory's config and weight headers, never load weights
and never run remote code (mbpo_core.models.info)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from api.auth.service import Principal
from api.errors import NotFound, Unprocessable
from api.inference.models import list_models as list_inference_models
from api.models.repository import ModelRepository
from api.models.schemas import ModelCreate
from api.paths import resolve_allowed_path
from infra.db.models import BaseModelRecord
from infra.settings import Settings
from mbpo_core.models.info import ModelDirError, inspect_model_dir


def register_model(
    session: Session, settings: Settings, principal: Principal, body: ModelCreate
) -> BaseModelRecord:
    path = resolve_allowed_path(body.path, settings)
    if not path.is_dir():
        raise Unprocessable("path must be a model directory", code="not_a_model_dir", field="path")
    try:
        info = inspect_model_dir(path)
    except ModelDirError as exc:
        raise Unprocessable(str(exc), code=exc.code, field="path") from exc
    return ModelRepository(session).add(
        BaseModelRecord(
            owner_id=principal.user_id,
            name=body.name,
            path=str(path),
            family=info.family,
            model_type=info.model_type,
            architectures=info.architectures,
            param_count=info.param_count,
        )
    )


def get_model(session: Session, principal: Principal, model_id: str) -> BaseModelRecord:
    model = ModelRepository(session).get_visible(model_id, principal)
    if model is None:
        raise NotFound(f"model {model_id} not found")
    return model


def list_models(
    session: Session, principal: Principal, *, before: str | None, limit: int
) -> Sequence[BaseModelRecord]:
    return ModelRepository(session).list_visible(principal, before=before, limit=limit)


def list_served_models(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """Everything chat completions can serve to `principal`, as OpenAI model objects."""
    return list_inference_models(session, principal)


def get_served_model(session: Session, principal: Principal, name: str) -> dict[str, Any]:
    for entry in list_inference_models(session, principal):
        if entry["id"] == name:
            return entry
    raise NotFound(f"model {name!r} not found", code="model_not_found")
