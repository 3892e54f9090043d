"""Request and response bodies of /v1/models."""

from __future__ import annotations

from datetime import datetime

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
    family: str = Field(description="qwen2_vl, qwen2_5_vl or llava")
    model_type: str
    architectures: list[str]
    param_count: int
    created_at: datetime
