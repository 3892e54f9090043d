"""Request and response bodies of /v1/models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1, description="Absolute server path of a Hugging Face model directory.")


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    path: str
    family: str = Field(description="The model family (docs/models.md lists the supported ones).")
    model_type: str
    architectures: list[str]
    param_count: int
    created_at: datetime


class ServedModel(BaseModel):
    """An OpenAI model object; the project's fields (kind, name, run_id, step, ...) beside."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(
        description="What chat completions take as `model`: model:<id>, run:<id>, run:<id>@<step>"
    )
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["base_model", "run", "checkpoint"]


class ServedModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ServedModel]

    @classmethod
    def of(cls, entries: list[dict[str, Any]]) -> ServedModelList:
        return cls(data=[ServedModel.model_validate(e) for e in entries])
