"""/v1/models: register and read base models."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.models import service
from api.models.schemas import ModelCreate, ModelRead, ServedModel, ServedModelList

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, response_model=ModelRead, responses=error_responses(400, 413))
def register_model(
    body: ModelCreate, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> ModelRead:
    """Register a local Hugging Face model directory (inside MBPO_DATA_ROOTS) as a base model."""
    return ModelRead.model_validate(service.register_model(session, settings, principal, body))


@router.get("", response_model=ServedModelList)
def list_models(session: SessionDep, principal: PrincipalDep) -> ServedModelList:
    """OpenAI's model list: base models (`model:<id>`) and the checkpoints of runs (`run:<id>` for
    the newest, `run:<id>@<step>`), each usable as `model` in /v1/chat/completions."""
    return ServedModelList.of(service.list_served_models(session, principal))


@router.get("/{model_id}", response_model=ModelRead | ServedModel, responses=error_responses(404))
def get_model(model_id: str, session: SessionDep, principal: PrincipalDep) -> ModelRead | ServedModel:
    """A registered base model by its id (`mdl_...`), or, for a served name (`model:<id>`,
    `run:<id>`, `run:<id>@<step>`), its OpenAI model object (what `client.models.retrieve` reads)."""
    if ":" in model_id:
        return ServedModel.model_validate(service.get_served_model(session, principal, model_id))
    return ModelRead.model_validate(service.get_model(session, principal, model_id))
