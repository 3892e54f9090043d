"""Model names of the OpenAI-compatible endpoints, resolved to what a worker loads.

model:<id>          a registered base model
run:<id>            a run's newest complete checkpoint
run:<id>@<step>     a run's checkpoint at that step
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.auth.service import Principal
from api.errors import NotFound
from api.inference.repository import InferenceModelRepository
from api.ttl_cache import TTLCache

# How long the chat endpoint reuses a resolved name without asking the database again (a database
# round trip is a sizeable share of a short answer's latency): a new checkpoint becomes what
# `run:<id>` means, and a deleted model stops resolving, within this many seconds.
RESOLVE_CACHE_SECONDS = 5.0

# A step is an INTEGER column: nine digits stay below its largest value (infra.db.base.INT32_MAX).
_NAME = re.compile(r"^(?:model:(?P<model>[\w-]+)|run:(?P<run>[\w-]+)(?:@(?P<step>\d{1,9}))?)$")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as the client wrote it, echoed in responses
    key: str  # the worker's cache key: one loaded copy per base model / checkpoint
    path: str
    base_path: str | None = None  # the base model a LoRA-only checkpoint applies to

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.path, "base_path": self.base_path}


class ResolvedModels(TTLCache[tuple[Principal, str], ResolvedModel]):
    """Recent successful resolutions, per principal and name (see RESOLVE_CACHE_SECONDS)."""

    def __init__(self, ttl: float = RESOLVE_CACHE_SECONDS):
        super().__init__(ttl)


def _not_found(name: str, field: str) -> NotFound:
    return NotFound(
        f"model {name!r} does not exist or you have no access to it; "
        "use model:<id>, run:<id> or run:<id>@<step> (GET /v1/models lists them)",
        code="model_not_found",
        field=field,
    )


def resolve_model(session: Session, principal: Principal, name: str, field: str = "model") -> ResolvedModel:
    match = _NAME.match(name.strip())
    if match is None:
        raise _not_found(name, field)
    repo = InferenceModelRepository(session)
    if match["model"]:
        record = repo.base_model(match["model"], principal)
        if record is None:
            raise _not_found(name, field)
        return ResolvedModel(name, f"model:{record.id}", record.path)
    run = repo.run(match["run"], principal)
    step = int(match["step"]) if match["step"] else None
    checkpoint = repo.checkpoint(run.id, step) if run is not None else None
    if run is None or checkpoint is None:
        raise _not_found(name, field)
    base = repo.base_model_by_id(run.base_model_id)
    return ResolvedModel(name, f"checkpoint:{checkpoint.id}", checkpoint.path, base.path if base else None)


def list_models(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """OpenAI model objects (id, object, created, owned_by) with the project's fields beside."""
    repo = InferenceModelRepository(session)
    out: list[dict[str, Any]] = []
    for record in repo.base_models(principal):
        out.append(
            {
                "id": f"model:{record.id}",
                "object": "model",
                "created": int(record.created_at.timestamp()),
                "owned_by": record.owner_id,
                "kind": "base_model",
                "name": record.name,
                "base_model_id": record.id,
                "family": record.family,
                "model_type": record.model_type,
                "param_count": record.param_count,
            }
        )
    newest: dict[str, dict[str, Any]] = {}
    for run, checkpoint in repo.checkpoints(principal):
        entry: dict[str, Any] = {
            "id": f"run:{run.id}@{checkpoint.step}",
            "object": "model",
            "created": int(checkpoint.created_at.timestamp()),
            "owned_by": run.owner_id,
            "kind": "checkpoint",
            "name": f"{run.name} @ step {checkpoint.step}",
            "run_id": run.id,
            "run_status": run.status,
            "step": checkpoint.step,
            "checkpoint_id": checkpoint.id,
            "base_model_id": run.base_model_id,
            "metrics": checkpoint.metrics,
            "eval_scores": checkpoint.eval_scores,
        }
        out.append(entry)
        newest[run.id] = entry  # ordered by step: the last one wins
    for run_id, entry in newest.items():
        alias = {**entry, "id": f"run:{run_id}", "kind": "run", "name": entry["name"].split(" @ ")[0]}
        out.append(alias)
    return out
