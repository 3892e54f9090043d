"""Typed SQLAlchemy models: the database is the source of truth; the broker only carries ids.

Runs, events, metrics, artefacts and checkpoints are here from the start (docs/architecture.md) so
the run lifecycle can be built on them without a schema redesign.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from infra.db.base import Base, JSONType, UTCDateTime, new_id, utcnow

# Autoincrementing big integers; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class DatasetStatus(StrEnum):
    validating = "validating"
    ready = "ready"
    invalid = "invalid"  # the data is wrong: the report names lines and reasons
    failed = "failed"  # the job broke (storage vanished, repeated crashes): error_code says why


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LeaseMixin:
    """Columns of a job a worker holds by lease (see infra.db.lease)."""

    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("usr"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiKey(Base):
    """An API key is stored as its public prefix (for lookup) and the SHA-256 of the whole key."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="api_keys")


class BaseModelRecord(Base):
    """A registered base model: a local Hugging Face directory, inspected but never loaded by the API."""

    __tablename__ = "base_models"
    __table_args__ = (Index(None, "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    family: Mapped[str] = mapped_column(String(40))
    model_type: Mapped[str] = mapped_column(String(80))
    architectures: Mapped[list[str]] = mapped_column(JSONType, default=list)
    param_count: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(TimestampMixin, LeaseMixin, Base):
    """A manifest plus its images, in `root_path` (uploads live under MBPO_HOME/datasets/<id>/).

    A benchmark (format "benchmark", evaluation only) is `benchmark`'s official files at `root_path`
    (a file or a folder, as its loader takes them; `manifest_name` is empty) and its image folder
    `images_path`; they stay where they are (mbpo_core.evaluation.benchmarks.dataset)."""

    __tablename__ = "datasets"
    __table_args__ = (Index(None, "owner_id", "id"), Index(None, "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20))  # "upload" | "path"
    root_path: Mapped[str] = mapped_column(Text)
    manifest_name: Mapped[str] = mapped_column(String(255))
    # How it came in (mbpo_core.data.formats.FORMATS). Anything but "manifest" is converted by the
    # validation job from `import_path` into a manifest + images under `root_path`.
    format: Mapped[str] = mapped_column(String(20), default="manifest", server_default="manifest")
    import_path: Mapped[str | None] = mapped_column(Text)
    import_columns: Mapped[dict[str, str] | None] = mapped_column(JSONType)
    benchmark: Mapped[str | None] = mapped_column(String(40))
    images_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=DatasetStatus.validating)
    num_samples: Mapped[int | None] = mapped_column(Integer)
    task_counts: Mapped[dict[str, int] | None] = mapped_column(JSONType)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Run(TimestampMixin, LeaseMixin, Base):
    """One MBPO alignment run. `status` is the lifecycle state, `stage` the pipeline step it is in
    (kept while cancelling or after failing, so resume knows where to continue)."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index(None, "owner_id", "id"),
        Index(None, "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("run"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"))
    offline_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    online_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    eval_dataset_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # infra.runs.lifecycle.RunStatus
    stage: Mapped[str | None] = mapped_column(String(20))
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # overall, 0..1
    stage_progress: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)  # stage -> 0..1
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # base vs aligned evaluation
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Last `seq` handed to a RunEvent: bumped in the event's own transaction, so the row lock orders
    # concurrent writers and events commit in seq order (a reader never sees seq n+1 before n).
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RunEvent(Base):
    """Append-only run log; `seq` is per run, gap-free, and the SSE event id."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(40))
    stage: Mapped[str | None] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class RunMetric(Base):
    """One scalar of a run's time series (loss, reward, kl, ... by step)."""

    __tablename__ = "run_metrics"
    __table_args__ = (Index(None, "run_id", "name", "step"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage: Mapped[str | None] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Artefact(Base):
    """A file a run or dataset produced, stored under the storage root at relative `path`."""

    __tablename__ = "artefacts"
    __table_args__ = (UniqueConstraint("run_id", "path"), Index(None, "dataset_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))  # mined_pairs, eval_report, image, thumbnail, ...
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """A saved training state; `complete` is set only once every file is written (resume uses it)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    eval_scores: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SpotCheckRecord(Base):
    """A hallucination spot-check: one image and question put to several models, each answering
    with the image and with its null image, with the IIG of both answers (`results`, in order)."""

    __tablename__ = "spot_checks"
    __table_args__ = (Index(None, "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("spot"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(Text)
    null_image: Mapped[str] = mapped_column(String(10))
    max_tokens: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    thumbnail: Mapped[str] = mapped_column(Text)  # a small JPEG data URL for the history list
    models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """One admin action (key created/revoked, run cancelled/resumed, ...): who, what, on what, when.
    Append-only; never holds a secret (a key appears by its id and prefix, never in clear)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor_key_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(60))
    target_kind: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class OutboxJob(Base):
    """A job written in the same transaction as the row it is about, sent to the broker after the
    commit and deleted once sent. A job whose send failed (broker down) stays here and is sent
    again by the relay as soon as the broker is back (infra.jobs)."""

    __tablename__ = "job_outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    args: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
