"""Request and response bodies of /v1/datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from infra.db.models import DatasetStatus

DatasetFormat = Literal["auto", "manifest", "hf_disk", "parquet", "trl", "llava", "benchmark"]
ColumnName = Literal["id", "image", "question", "answer", "task", "choices"]  # formats.COLUMNS
Columns = dict[ColumnName, Annotated[str, StringConstraints(min_length=1, max_length=200)]]
FORMAT_DESCRIPTION = (
    "Format of the files (docs/api.md, 'Dataset formats'): manifest, hf_disk (datasets "
    "save_to_disk), parquet, trl (TRL conversational: messages, prompt-completion or preference), "
    "llava (LLaVA JSON); auto detects it. Other formats than manifest are converted into a manifest "
    "+ PNG images by the validation job. benchmark: a benchmark's official files, for evaluation only "
    "(give `benchmark`; docs/benchmarks.md)."
)
BENCHMARK_DESCRIPTION = (
    "Register `path` as this benchmark's official files (pope, chair, amber, mme, ...: "
    "docs/benchmarks.md), scored by its own loader and scorer; usable only in eval_dataset_ids."
)
COLUMNS_DESCRIPTION = 'hf_disk / parquet: the source column of a manifest field, e.g. {"question": "query"}.'


class DatasetFromPath(BaseModel):
    """Register a dataset that already sits on the server, inside MBPO_DATA_ROOTS."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(
        min_length=1,
        description="Absolute server path: a directory holding manifest.jsonl, or a .jsonl manifest "
        "whose image paths are relative to its directory; or a dataset in another `format`.",
    )
    format: DatasetFormat = Field("auto", description=FORMAT_DESCRIPTION)
    columns: Columns | None = Field(None, description=COLUMNS_DESCRIPTION)
    benchmark: str | None = Field(None, min_length=1, max_length=40, description=BENCHMARK_DESCRIPTION)
    images: str | None = Field(
        None, min_length=1, description="benchmark only: absolute server path of its image folder."
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
    format: str = Field(description="The format it was registered in (manifest unless converted).")
    benchmark: str | None = Field(None, description="format benchmark: which benchmark its files are.")
    num_samples: int | None
    task_counts: dict[str, int] | None
    stats: dict[str, Any] | None = Field(
        description="Per task (manifests) or, for a benchmark, `benchmark`: its item count per split / "
        "subtask; and the images."
    )
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
