"""Environment settings: one pydantic-settings class behind the cached `get_settings()`.

Read by the API, the worker and the CLI, so this module must not import fastapi. Nothing is built
at import time: call `get_settings()` where a value is needed (tests clear its cache).

With neither `DATABASE_URL` nor `BROKER_URL` set the service runs embedded: a SQLite file and a
SQLite-backed Celery broker inside `MBPO_HOME`, no servers needed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service settings. Each field's environment variable is given in `env_names()`."""

    model_config = SettingsConfigDict(env_prefix="MBPO_", extra="ignore", frozen=True, populate_by_name=True)

    env: Literal["development", "test", "production"] = Field(
        "development", description="Deployment kind; production refuses the embedded database and broker."
    )
    home: Path = Field(
        Path(".mbpo"), description="Data directory: uploads, thumbnails, artefacts, embedded DB."
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "MBPO_DATABASE_URL"),
        description="SQLAlchemy URL (postgresql://...). Unset: SQLite file in MBPO_HOME.",
    )
    broker_url: str | None = Field(
        None,
        validation_alias=AliasChoices("BROKER_URL", "MBPO_BROKER_URL"),
        description="Celery broker URL (redis://...). Unset: SQLite-backed broker in MBPO_HOME.",
    )
    broker_key_prefix: str = Field(
        "", description="Prefix for every broker key, so several deployments (or test runs) share one Redis."
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Server directories datasets and models may be registered from (os.pathsep-separated).",
    )
    max_upload_bytes: int = Field(2048 * MiB, ge=1, description="Largest accepted upload request body.")
    max_json_bytes: int = Field(
        1 * MiB,
        ge=1024,
        description="Largest JSON request body (chat completions and spot-checks get room for their "
        "inline images on top); refused with 413 before it is parsed.",
    )
    max_extracted_bytes: int = Field(
        8192 * MiB, ge=1, description="Largest total size of an extracted image zip."
    )
    max_zip_entries: int = Field(1_000_000, ge=1, description="Most files in an image zip.")
    max_zip_ratio: int = Field(
        200,
        ge=1,
        description="Largest compression ratio of a zip entry (zip-bomb guard); images barely compress.",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest width*height of a dataset image (decompression-bomb guard)."
    )
    max_image_bytes: int = Field(32 * MiB, ge=1, description="Largest dataset image file.")
    thumbnail_size: int = Field(
        128, ge=16, le=1024, description="Longest side of dataset thumbnails, pixels."
    )
    db_pool_size: int = Field(
        20,
        ge=1,
        description="Database connections kept per process; an API process runs pool - 1 request "
        "sessions at once.",
    )
    db_read_concurrency: int | None = Field(
        None,
        ge=1,
        description="Read units (one-hop reads: dataset, run and event pages) run at once per API "
        "process. Unset: the CPU count + 1. Reads are short and mostly Python work while the database "
        "is local; more of them at once only queue on the interpreter lock (measured: 2 cores, 50 "
        "clients, p99 40 ms at 3, about 100 ms at 4 and more). Raise it for a remote database whose "
        "round trip dominates.",
    )
    db_max_overflow: int = Field(
        10,
        ge=0,
        description="Extra connections per process, opened and closed again, for the short transactions "
        "outside the request sessions (authentication, readiness) when the pool is busy.",
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Key signing admin-UI session cookies and CSRF tokens; every API process must share "
        "it. Unset: a random one is created in MBPO_HOME/session_secret.",
    )
    lease_seconds: int = Field(60, ge=5, description="Job lease length; a worker renews it by heartbeat.")
    sweep_seconds: float = Field(
        30, gt=0, description="How often a worker looks for runs whose worker died (expired lease)."
    )
    outbox_relay_seconds: float = Field(
        2,
        gt=0,
        description="How often a worker sends the jobs left in the outbox (written while the broker "
        "was unreachable).",
    )
    min_free_disk_bytes: int = Field(
        1024 * MiB,
        ge=0,
        description="/readyz reports not ready when the file system of MBPO_HOME has less free space. "
        "0: no check.",
    )
    sse_ping_seconds: float = Field(
        15, gt=0, description="Keep-alive comment interval of event streams (also their database re-check)."
    )
    run_stall_seconds: float = Field(
        3600,
        gt=0,
        description="A run that reports no progress for this long is presumed hung: its worker stops "
        "renewing the lease, so the sweeper re-queues it (or fails it after max_attempts).",
    )
    db_outage_seconds: float = Field(
        30,
        ge=0,
        description="How long a running job waits for an unreachable database (retrying with backoff) "
        "before it gives the attempt up; a shorter outage costs nothing.",
    )
    run_max_seconds: float = Field(
        0,
        ge=0,
        description="Longest wall time of one run attempt; beyond it the run stops with a checkpoint and "
        "fails with error.code time_budget_exceeded. 0: no limit.",
    )
    run_max_memory_bytes: int | None = Field(
        None,
        ge=0,
        description="Largest resident memory of a worker process executing a run; beyond it the run stops "
        "at its next safe point (or is ended at once if it keeps growing) and fails with error.code "
        "memory_budget_exceeded. Unset: 80% of the host's memory; 0: no limit.",
    )
    inference_allow_image_urls: bool = Field(
        False,
        description="Let chat completions fetch http(s) image URLs (public addresses only); "
        "otherwise images must be base64 data URLs.",
    )
    inference_url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host:port pairs exempt from the private-address refusal of image URLs "
        "(trusted internal image servers), comma-separated.",
    )
    inference_url_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest time fetching one image URL may take, redirects included."
    )
    inference_max_images: int = Field(1, ge=1, le=16, description="Most images in one chat request.")
    inference_max_tokens: int = Field(512, ge=1, description="Largest max_tokens of a chat completion.")
    inference_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Longest wait for a worker's next reply (model loading included) before a 504.",
    )
    inference_cache_bytes: int = Field(
        8 * 1024 * MiB,
        ge=1,
        description="Weights an inference worker keeps loaded; least recently used evicted.",
    )
    inference_max_batch: int = Field(
        16, ge=1, description="Most waiting requests for one model decoded together by an inference worker."
    )
    rate_limit_runs_per_minute: int = Field(
        60, ge=0, description="Run creations (POST /v1/runs) one API key may make per window; 0: unlimited."
    )
    rate_limit_inference_per_minute: int = Field(
        600,
        ge=0,
        description="Chat completions and spot-checks one API key may request per window; 0: unlimited.",
    )
    rate_limit_window_seconds: float = Field(
        60,
        gt=0,
        description="Length of the rate limits' fixed window (a minute; shorter only for tests). The "
        "window of a key starts at its first request.",
    )
    metrics_enabled: bool = Field(
        True,
        description="Serve Prometheus metrics at GET /metrics of the API (no authentication: keep it off "
        "the public network).",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port on which each worker serves its Prometheus metrics (all interfaces). 0: none.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="Where runs with train.report_to: [mlflow] are tracked (an MLflow server URL or a "
        "database URI). Unset: sqlite:///MBPO_HOME/mlflow.db.",
    )
    mlflow_experiment: str = Field("mbpo", description="MLflow experiment of tracked runs.")
    wandb_project: str = Field("mbpo", description="W&B project of runs with train.report_to: [wandb].")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline",
        description="W&B mode; offline writes under MBPO_HOME/wandb (`wandb sync` uploads it later); "
        "online needs WANDB_API_KEY in the worker's environment (never logged).",
    )
    log_level: str = Field("INFO", description="Log level of API and worker.")

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p.strip()]
        return value

    @field_validator("inference_url_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip().lower() for p in value.split(",") if p.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None) -> str | None:
        # "postgresql://" would pick psycopg2, which is not installed; psycopg 3 is.
        if value and value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value or None

    @field_validator("broker_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _production_needs_servers(self) -> Settings:
        if self.env == "production" and not (self.database_url and self.broker_url):
            raise ValueError("MBPO_ENV=production needs DATABASE_URL and BROKER_URL (no embedded mode)")
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    def run_dir(self, run_id: str) -> Path:
        """Where a run's files live (mining, training, eval; see mbpo_core.pipeline.stages.RunLayout)."""
        return self.home_dir / "runs" / run_id

    @property
    def embedded(self) -> bool:
        return self.database_url is None and self.broker_url is None

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'mbpo.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home_dir / 'broker.db'}"

    @property
    def datasets_dir(self) -> Path:
        return self.home_dir / "datasets"

    def upload_source_dir(self, dataset_id: str) -> Path:
        """Where an upload in another format than the manifest waits for its conversion."""
        return self.datasets_dir / f"{dataset_id}.source"

    @property
    def resolved_data_roots(self) -> list[Path]:
        return [p.expanduser().resolve() for p in self.data_roots]

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable this class reads."""
        names: set[str] = set()
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(choice) for choice in alias.choices)
            else:
                names.add(f"{prefix}{name}".upper())
        return names


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # Every value comes from the environment or a default; mypy cannot see that.
    return Settings()  # type: ignore[call-arg]
