"""The first-start demo: register a built testbed's base model and datasets for the development
admin, and write the request body of a real run beside the admin key, so one curl launches it.

Idempotent: a model or dataset already registered from the same directory is reused. This is a
trusted local action of `mbpo serve --demo DIR` (not an API call), so DIR need not be inside
MBPO_DATA_ROOTS. The datasets go through the normal validation job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.auth.repository import AuthRepository
from api.datasets.repository import DatasetRepository
from api.models.repository import ModelRepository
from infra.db.models import BaseModelRecord, Dataset, DatasetStatus
from infra.jobs import JobQueue, TaskName, get_celery
from infra.settings import Settings
from mbpo_core.models.info import inspect_model_dir

DEMO_SPLITS = ("offline", "online", "pope_random", "pope_popular", "pope_adversarial", "vqa")
EVAL_SPLITS = ("pope_random", "pope_adversarial", "vqa")
RUN_FILE = "demo_run.json"
# Minutes on a laptop CPU; every stage does real work (see examples/testbed-quick.yaml for more).
DEMO_CONFIG: dict[str, Any] = {
    "device": "auto",
    "iig": {"keep_fraction": 0.5, "null_image": "blur"},  # blur elicits the testbed's prior
    "attack": {"steps": 10},
    "mining": {"limit": 64, "max_new_tokens": 8},
    "train": {
        "max_steps": 20,
        "prompts_per_step": 4,
        "num_generations": 4,
        "save_steps": 5,
        "learning_rate": 5e-5,
    },
    "eval": {"limit": 100, "batch_size": 32},
}


@dataclass(frozen=True)
class Demo:
    model_id: str
    dataset_ids: dict[str, str]
    run_file: Path


def _model(session: Session, owner_id: str, path: Path) -> str:
    existing = ModelRepository(session).id_by_path(owner_id, str(path))
    if existing is not None:
        return existing
    info = inspect_model_dir(path)
    row = BaseModelRecord(
        owner_id=owner_id,
        name="testbed-base",
        path=str(path),
        family=info.family,
        model_type=info.model_type,
        architectures=info.architectures,
        param_count=info.param_count,
    )
    session.add(row)
    session.flush()
    return row.id


def _dataset(session: Session, jobs: JobQueue, owner_id: str, split: str, root: Path) -> str:
    existing = DatasetRepository(session).id_by_root(owner_id, str(root))
    if existing is not None:
        return existing
    row = Dataset(
        owner_id=owner_id,
        name=f"testbed-{split}",
        source="path",
        root_path=str(root),
        manifest_name="manifest.jsonl",
        status=DatasetStatus.validating,
    )
    session.add(row)
    session.flush()
    jobs.enqueue(TaskName.validate_dataset, row.id)
    return row.id


def register_demo(session: Session, settings: Settings, user_name: str, testbed: Path) -> Demo:
    """Register (or find) the demo resources for user `user_name` and write the run body; the
    validation jobs of new datasets are sent after the commit."""
    root = testbed.expanduser().resolve(strict=True)
    owner = AuthRepository(session).user_by_name(user_name)
    if owner is None:
        raise ValueError(f"user {user_name!r} does not exist")
    owner_id = owner.id
    jobs = JobQueue(session)
    model_id = _model(session, owner_id, root / "base_model")
    datasets = {
        split: _dataset(session, jobs, owner_id, split, root / "datasets" / split) for split in DEMO_SPLITS
    }
    session.commit()
    if jobs.pending:
        jobs.send(get_celery(settings))
    body = {
        "name": "demo: MBPO on the testbed",
        "base_model_id": model_id,
        "offline_dataset_id": datasets["offline"],
        "online_dataset_id": datasets["online"],
        "eval_dataset_ids": [datasets[s] for s in EVAL_SPLITS],
        "config": DEMO_CONFIG,
    }
    run_file = settings.home_dir / RUN_FILE
    run_file.write_text(json.dumps(body, indent=2) + "\n")
    return Demo(model_id, datasets, run_file)
