"""Request and response bodies of /v1/datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from infra.db.models import DatasetStatus


class DatasetFromPath(BaseModel):
    """Register a dataset that already sits on the server, inside MBPO_DATA_ROOTS."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(
        min_length=1,
        description="Absolute server path: a directory holding manifest.jsonl, or a .jsonl manifest "
        "whose image paths are relative to its directory.",
    )


class ErrorInfo(BaseModel):
    code: str
    message: str


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: DatasetStatus
    source: Literal["upload", "path"]
    num_samples: int | None
    task_counts: dict[str, int] | None
    stats: dict[str, Any] | None
    error: ErrorInfo | None = None
    created_at: datetime
    updated_at: datetime
    validated_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Self:
        out = cls.model_validate(row)
        if row.error_code:
            out.error = ErrorInfo(code=row.error_code, message=row.error_message or "")
        return out


class DatasetDetail(DatasetRead):
    report: dict[str, Any] | None = Field(
        None, description="Validation report: counts, and every problem with its line number and reason."
    )
