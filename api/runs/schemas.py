"""Request and response bodies of /v1/runs."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from infra.runs.lifecycle import RunStatus
from mbpo_core.config import MBPOConfig


class RunCreate(BaseModel):
    """Launch a run. `config` is the same `MBPOConfig` the core executes: an unknown field is an
    error naming it. At least one of `offline_dataset_id` (mined for hard negatives) and
    `online_dataset_id` (prompts with verified rewards) is needed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    base_model_id: str = Field(min_length=1, max_length=40)
    offline_dataset_id: str | None = Field(None, max_length=40)
    online_dataset_id: str | None = Field(None, max_length=40)
    eval_dataset_ids: list[str] = Field(default_factory=list, max_length=32)
    config: MBPOConfig = Field(default_factory=MBPOConfig)

    def request_hash(self) -> str:
        """Identity of the request for Idempotency-Key: canonical JSON with defaults filled in."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ErrorInfo(BaseModel):
    code: str
    message: str


class RunRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: RunStatus
    stage: str | None = Field(description="Pipeline stage it is in, or stopped in (kept after failing).")
    progress: float = Field(description="Overall progress, 0..1.")
    stage_progress: dict[str, float] = Field(description="Progress per stage, 0..1.")
    eta_seconds: float | None
    attempt: int
    max_attempts: int
    error: ErrorInfo | None = None
    latest_metrics: dict[str, Any]
    scores: dict[str, Any] | None = Field(
        None,
        description="Evaluation when done: `base` and `aligned` by split, their `delta`, and "
        "`significance` (per split: 95% paired bootstrap interval of each delta, McNemar on accuracy); "
        "`benchmarks`, per benchmark split: `benchmark`, `items`, the benchmark's metric tables "
        "(row -> metric) for `base`, `aligned` and `delta`, and the scorer's order of `rows` and "
        "`metrics` (docs/benchmarks.md).",
    )
    base_model_id: str
    offline_dataset_id: str | None
    online_dataset_id: str | None
    eval_dataset_ids: list[str]
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> RunRead:
        out = cls.model_validate(row)
        if row.error_code:
            out.error = ErrorInfo(code=row.error_code, message=row.error_message or "")
        return out


class RunEventRead(BaseModel):
    run_id: str
    seq: int
    type: str
    stage: str | None
    level: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    data: list[RunEventRead]
    last_seq: int = Field(description="Pass as `after` to read on (the `after` given when nothing is new).")


class MetricPoint(BaseModel):
    step: int
    value: float
    stage: str | None = None


class MetricsRead(BaseModel):
    run_id: str
    series: dict[str, list[MetricPoint]] = Field(description="Metric name -> points ordered by step.")


class NegativeRead(BaseModel):
    index: int
    id: str
    task: str
    question: str
    chosen: str
    rejected: str
    choices: list[str] | None = None
    iig: float | None
    logp_clean: float | None
    logp_adv: float | None
    prior_agreement: bool | None
    clean_image_url: str
    perturbed_image_url: str


class NegativePage(BaseModel):
    data: list[NegativeRead]
    total: int
    next_cursor: str | None = None
    summary: dict[str, Any] | None = Field(
        None, description="Mining summary (attack success vs random noise)."
    )


class CheckpointRead(BaseModel):
    step: int
    metrics: dict[str, Any]
    eval_scores: dict[str, Any] | None
    created_at: datetime
    download_url: str


class ArtefactRead(BaseModel):
    id: str
    kind: str = Field(
        description="validation_report, iig_scores, mined_pairs, mining_summary, model, eval_report"
    )
    path: str = Field(description="Path inside the run directory.")
    size_bytes: int | None
    sha256: str | None
    meta: dict[str, Any]
    created_at: datetime
    download_url: str | None = Field(description="For files served by /v1/artefacts (reports, pairs).")
