"""Run use cases: create (idempotent), read, list, cancel, resume, and the run's events, metrics,
mined negatives and checkpoints.

State changes are conditional UPDATEs plus an event in the request's transaction; the session
dependency commits, then sends the job and publishes the events (JobQueue.after_commit).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth.service import Principal
from api.datasets.repository import DatasetRepository
from api.datasets.service import BENCHMARK_FORMAT
from api.errors import Conflict, NotFound, Unprocessable
from api.models.repository import ModelRepository
from api.runs.repository import RunRepository
from api.runs.schemas import ArtefactRead, NegativeRead, RunCreate
from infra.audit import AuditAction, record_audit
from infra.db.base import utcnow
from infra.db.models import Checkpoint, Dataset, DatasetStatus, Run
from infra.events.publish import publish_events
from infra.events.store import append_event, event_payload, events_after
from infra.jobs import JobQueue, TaskName
from infra.runs.lifecycle import ACTIVE, RESUMABLE, TERMINAL, RunStatus, transition
from infra.settings import Settings
from mbpo_core.data.formats import pairs_to_preference_parquet
from mbpo_core.data.pairs import read_pairs
from mbpo_core.data.verifiers import CLOSED_TASKS

DEFAULT_MAX_ATTEMPTS = 3
# Files of a model directory a checkpoint download may contain: weights as safetensors, configs and
# processor/tokenizer files. Never pickles (optimizer.pt, *.bin), never anything else.
DOWNLOADABLE_SUFFIXES = frozenset({".safetensors", ".json", ".jinja", ".txt", ".model"})


def get_run(session: Session, principal: Principal, run_id: str) -> Run:
    run = RunRepository(session).get_visible(run_id, principal)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def _ready_dataset(session: Session, principal: Principal, dataset_id: str, field: str) -> Dataset:
    dataset = DatasetRepository(session).get_visible(dataset_id, principal)
    if dataset is None:
        raise Unprocessable(f"dataset {dataset_id} not found", code="dataset_not_found", field=field)
    if dataset.status != DatasetStatus.ready:
        raise Unprocessable(
            f"dataset {dataset_id} is {dataset.status}, not ready"
            + (" (wait for its validation to finish)" if dataset.status == DatasetStatus.validating else ""),
            code="dataset_not_ready",
            field=field,
        )
    return dataset


def _training_dataset(session: Session, principal: Principal, dataset_id: str, field: str) -> Dataset:
    dataset = _ready_dataset(session, principal, dataset_id, field)
    if dataset.format == BENCHMARK_FORMAT:
        raise Unprocessable(
            f"dataset {dataset_id} is a benchmark ({dataset.benchmark}): it can only be an evaluation "
            "dataset (eval_dataset_ids)",
            code="dataset_unsuitable",
            field=field,
        )
    return dataset


def _check_references(session: Session, principal: Principal, body: RunCreate) -> None:
    if ModelRepository(session).get_visible(body.base_model_id, principal) is None:
        raise Unprocessable(
            f"model {body.base_model_id} not found", code="model_not_found", field="base_model_id"
        )
    if body.offline_dataset_id is None and body.online_dataset_id is None:
        raise Unprocessable(
            "give offline_dataset_id (mined for hard negatives), online_dataset_id (prompts with "
            "verified rewards), or both",
            code="no_training_data",
            field="offline_dataset_id",
        )
    if body.offline_dataset_id is not None:
        _training_dataset(session, principal, body.offline_dataset_id, "offline_dataset_id")
    if body.online_dataset_id is not None:
        online = _training_dataset(session, principal, body.online_dataset_id, "online_dataset_id")
        if not CLOSED_TASKS & set(online.task_counts or {}):
            raise Unprocessable(
                "the online dataset has no yes_no, multiple_choice or number samples: online GRPO "
                "needs answers a verifier can check",
                code="dataset_unsuitable",
                field="online_dataset_id",
            )
    if len(set(body.eval_dataset_ids)) != len(body.eval_dataset_ids):
        raise Unprocessable(
            "eval_dataset_ids lists a dataset twice", code="duplicate", field="eval_dataset_ids"
        )
    for i, dataset_id in enumerate(body.eval_dataset_ids):
        _ready_dataset(session, principal, dataset_id, f"eval_dataset_ids.{i}")


def _publish_after_commit(jobs: JobQueue, settings: Settings, events: list[Any]) -> None:
    payloads = [event_payload(e) for e in events]
    jobs.after_commit(lambda: publish_events(settings, payloads))


def create_run(
    session: Session,
    jobs: JobQueue,
    settings: Settings,
    principal: Principal,
    body: RunCreate,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    """(run, created). The same Idempotency-Key with the same body returns the first run; with
    another body it is a 409. Nothing is queued unless a new run was created."""
    repo = RunRepository(session)
    request_hash = body.request_hash()
    if idempotency_key is not None:
        existing = repo.get_by_idempotency_key(principal.user_id, idempotency_key)
        if existing is not None:
            return _replay(existing, request_hash), False
    _check_references(session, principal, body)
    run = Run(
        owner_id=principal.user_id,
        name=body.name,
        base_model_id=body.base_model_id,
        offline_dataset_id=body.offline_dataset_id,
        online_dataset_id=body.online_dataset_id,
        eval_dataset_ids=list(body.eval_dataset_ids),
        config=body.config.model_dump(mode="json"),
        status=RunStatus.queued,
        stage_progress={},
        latest_metrics={},
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    try:
        with session.begin_nested():
            repo.add(run)
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = repo.get_by_idempotency_key(principal.user_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, request_hash), False
    event = append_event(session, run.id, "run_queued", "run queued", data={"name": run.name})
    _publish_after_commit(jobs, settings, [event])
    jobs.enqueue(TaskName.execute_run, run.id)
    return run, True


def _replay(existing: Run, request_hash: str) -> Run:
    if existing.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    return existing


def list_runs(
    session: Session, principal: Principal, *, status: Sequence[str] | None, before: str | None, limit: int
) -> Sequence[Run]:
    return RunRepository(session).list_visible(principal, status=status, before=before, limit=limit)


def cancel_run(
    session: Session, jobs: JobQueue, settings: Settings, principal: Principal, run_id: str
) -> Run:
    """An active run held by a worker becomes `cancelling` (the worker stops after its current
    step); one nobody holds (still queued, or its worker died) is `cancelled` at once."""
    run = get_run(session, principal, run_id)
    if run.status in TERMINAL:
        raise Conflict(f"run {run_id} already finished ({run.status})", code="run_finished")
    if run.status == RunStatus.cancelling:
        return run
    previous = str(run.status)
    now = utcnow()
    running = ACTIVE - {RunStatus.cancelling}
    unheld = or_(Run.lease_owner.is_(None), Run.lease_expires_at < now)
    event = transition(
        session,
        run_id,
        RunStatus.cancelled,
        sources=running,
        when=[unheld],
        values={
            "cancel_requested_at": now,
            "finished_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
            "eta_seconds": None,
        },
        message="run cancelled before a worker started it",
    ) or transition(
        session,
        run_id,
        RunStatus.cancelling,
        sources=running,
        values={"cancel_requested_at": now, "eta_seconds": None},
        message="cancel requested; the worker stops after its current step",
    )
    if event is None:  # it finished (or was cancelled) between the read and the update
        session.refresh(run)
        if run.status == RunStatus.cancelling:
            return run
        raise Conflict(f"run {run_id} already finished ({run.status})", code="run_finished")
    _publish_after_commit(jobs, settings, [event])
    session.refresh(run)
    _audit(session, principal, AuditAction.run_cancel, run, previous)
    return run


def resume_run(
    session: Session, jobs: JobQueue, settings: Settings, principal: Principal, run_id: str
) -> Run:
    """A failed or cancelled run goes back to the queue; the worker continues from what the run
    directory holds (finished stages, mined pairs, the last complete checkpoint)."""
    run = get_run(session, principal, run_id)
    if run.status not in RESUMABLE:
        raise Conflict(
            f"only failed or cancelled runs can be resumed; this one is {run.status}", code="not_resumable"
        )
    previous = str(run.status)
    event = transition(
        session,
        run_id,
        RunStatus.queued,
        sources=RESUMABLE,
        values={
            "error_code": None,
            "error_message": None,
            "finished_at": None,
            "cancel_requested_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "eta_seconds": None,
            # A fresh budget of attempts for this resumption (attempt keeps counting).
            "max_attempts": Run.attempt + DEFAULT_MAX_ATTEMPTS,
        },
        message=f"resumed from {run.status} at stage {run.stage or 'start'}",
    )
    if event is None:
        raise Conflict(f"run {run_id} changed state meanwhile; read it again", code="not_resumable")
    _publish_after_commit(jobs, settings, [event])
    jobs.enqueue(TaskName.execute_run, run_id)
    session.refresh(run)
    _audit(session, principal, AuditAction.run_resume, run, previous)
    return run


def _audit(session: Session, principal: Principal, action: AuditAction, run: Run, previous: str) -> None:
    """Record who changed the run's state (its owner or an admin), in the same transaction."""
    record_audit(
        session,
        action,
        target_kind="run",
        target_id=run.id,
        actor_user_id=principal.user_id,
        actor_key_id=principal.key_id,
        detail={"from": previous, "to": str(run.status), "owner_id": run.owner_id},
    )


def list_events(session: Session, principal: Principal, run_id: str, after: int, limit: int) -> list[Any]:
    get_run(session, principal, run_id)
    return list(events_after(session, run_id, after, limit))


def metric_series(session: Session, principal: Principal, run_id: str) -> dict[str, list[dict[str, Any]]]:
    get_run(session, principal, run_id)
    series: dict[str, list[dict[str, Any]]] = {}
    for m in RunRepository(session).metrics(run_id):
        series.setdefault(m.name, []).append({"step": m.step, "value": m.value, "stage": m.stage})
    return series


# ---- stored files -------------------------------------------------------------------------------


def storage_path(settings: Settings, relative: str) -> Path:
    """An artefact's absolute path: relative to the storage root and refused if it escapes it."""
    root = settings.home_dir
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise NotFound("artefact not found")
    return path


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Unprocessable("malformed cursor", code="invalid_cursor", field="cursor") from exc
    if not isinstance(offset, int) or offset < 0:
        raise Unprocessable("malformed cursor", code="invalid_cursor", field="cursor")
    return offset


def list_negatives(
    session: Session, settings: Settings, principal: Principal, run_id: str, cursor: str | None, limit: int
) -> tuple[list[NegativeRead], int, str | None, dict[str, Any] | None]:
    """Mined pairs in file order (paginated), with links to their images. Empty until mining ends."""
    get_run(session, principal, run_id)
    offset = _decode_offset(cursor)
    repo = RunRepository(session)
    artefact = repo.artefact_of_kind(run_id, "mined_pairs")
    if artefact is None:
        return [], 0, None, None
    path = storage_path(settings, artefact.path)
    pairs = read_pairs(path) if path.is_file() else []
    summary_artefact = repo.artefact_of_kind(run_id, "mining_summary")
    summary = None
    if summary_artefact is not None:
        summary_path = storage_path(settings, summary_artefact.path)
        if summary_path.is_file():
            summary = {k: v for k, v in json.loads(summary_path.read_text()).items() if k != "config"}
    files = f"/v1/artefacts/{artefact.id}/files/"
    page = []
    for index, pair in enumerate(pairs[offset : offset + limit], start=offset):
        page.append(
            NegativeRead(
                index=index,
                id=str(pair["id"]),
                task=pair["task"],
                question=pair["question"],
                chosen=pair["chosen"],
                rejected=pair["rejected"],
                choices=pair.get("choices"),
                iig=pair.get("iig"),
                logp_clean=pair.get("logp_clean"),
                logp_adv=pair.get("logp_adv"),
                prior_agreement=pair.get("prior_agreement"),
                clean_image_url=files + pair["image"],
                perturbed_image_url=files + pair["perturbed_image"],
            )
        )
    next_cursor = _encode_offset(offset + limit) if offset + limit < len(pairs) else None
    return page, len(pairs), next_cursor, summary


def export_negatives(
    session: Session, settings: Settings, principal: Principal, run_id: str, out: Path
) -> int:
    """Write the run's mined pairs to `out` as a TRL preference parquet (mbpo_core.data.formats);
    returns the number of pairs. 404 until mining has stored its pairs."""
    get_run(session, principal, run_id)
    artefact = RunRepository(session).artefact_of_kind(run_id, "mined_pairs")
    path = storage_path(settings, artefact.path) if artefact is not None else None
    if path is None or not path.is_file():
        raise NotFound(f"run {run_id} has no mined pairs yet")
    return pairs_to_preference_parquet(path, out)


def list_checkpoints(session: Session, principal: Principal, run_id: str) -> Sequence[Checkpoint]:
    get_run(session, principal, run_id)
    return RunRepository(session).checkpoints(run_id)


def checkpoint_files(
    session: Session, settings: Settings, principal: Principal, run_id: str, step: int
) -> list[tuple[str, Path]]:
    """(archive name, path) of the files a checkpoint download contains: the loadable model's
    safetensors, config and processor files. Every path is checked to lie inside the run
    directory (symlinks resolved); anything else in the directory is left out."""
    get_run(session, principal, run_id)
    checkpoint = RunRepository(session).checkpoint(run_id, step)
    if checkpoint is None:
        raise NotFound(f"run {run_id} has no complete checkpoint at step {step}")
    root = settings.run_dir(run_id).resolve()
    model_dir = (storage_path(settings, checkpoint.path) / "model").resolve()
    if not model_dir.is_relative_to(root) or not model_dir.is_dir():
        raise NotFound(f"checkpoint {step} of run {run_id} is no longer on disk")
    files = []
    for path in sorted(model_dir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix not in DOWNLOADABLE_SUFFIXES:
            continue
        real = path.resolve()
        if real.is_relative_to(root):
            files.append((f"checkpoint-{step}/{path.name}", real))
    if not any(name.endswith(".safetensors") for name, _ in files):
        raise NotFound(f"checkpoint {step} of run {run_id} has no weights on disk")
    return files


ARTEFACT_FILE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".gz": "application/gzip",  # the TensorBoard logs of a run (tensorboard.tar.gz)
}


def artefact_file(
    session: Session, settings: Settings, principal: Principal, artefact_id: str, relative: str | None
) -> tuple[Path, str]:
    """(path, media type) of an artefact file, or of a file beside it (`relative`: the images a
    pairs file refers to). Only image and JSON files, only inside the artefact's run directory."""
    repo = RunRepository(session)
    artefact = repo.artefact(artefact_id)
    if artefact is None or artefact.run_id is None:
        raise NotFound(f"artefact {artefact_id} not found")
    get_run_or_404 = repo.get_visible(artefact.run_id, principal)
    if get_run_or_404 is None:
        raise NotFound(f"artefact {artefact_id} not found")
    root = settings.run_dir(artefact.run_id).resolve()
    base = storage_path(settings, artefact.path)
    target = base if relative is None else (base if base.is_dir() else base.parent) / relative
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise NotFound("file not found") from exc
    media_type = ARTEFACT_FILE_TYPES.get(real.suffix.lower())
    if not real.is_relative_to(root) or not real.is_file() or media_type is None:
        raise NotFound("file not found")
    return real, media_type


def list_artefacts(session: Session, principal: Principal, run_id: str) -> list[ArtefactRead]:
    get_run(session, principal, run_id)
    prefix = f"runs/{run_id}/"
    return [
        ArtefactRead(
            id=a.id,
            kind=a.kind,
            path=a.path.removeprefix(prefix),
            size_bytes=a.size_bytes,
            sha256=a.sha256,
            meta=a.meta,
            created_at=a.created_at,
            download_url=f"/v1/artefacts/{a.id}" if Path(a.path).suffix in ARTEFACT_FILE_TYPES else None,
        )
        for a in RunRepository(session).artefacts(run_id)
    ]
