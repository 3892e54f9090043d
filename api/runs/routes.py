"""/v1/runs: thin HTTP adapters over api.runs.service."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import WithJsonSchema
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from api.deps import JobQueueDep, PrincipalDep, SessionDep, SettingsDep, get_session_factory
from api.errors import error_responses
from api.pagination import Page, decode_cursor, encode_cursor
from api.rate_limits import RunCreationLimit
from api.runs import service
from api.runs.schemas import (
    ArtefactRead,
    CheckpointRead,
    EventPage,
    MetricPoint,
    MetricsRead,
    NegativePage,
    RunCreate,
    RunEventRead,
    RunRead,
)
from api.runs.stream import event_stream
from infra.db.base import INT32_MAX
from infra.runs.lifecycle import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])

FactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
RunId = Annotated[str, PathParam(max_length=40)]


@router.post(
    "",
    status_code=201,
    response_model=RunRead,
    dependencies=[RunCreationLimit],
    responses={
        200: {
            "model": RunRead,
            "description": "A retry with the same Idempotency-Key and body: the run it created first",
            "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}},
        },
        **error_responses(400, 409, 413, 429),
    },
)
def create_run(
    body: RunCreate,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    jobs: JobQueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retry-safe creation: the same key and body return the same run (200); "
            "the same key with another body is a 409.",
        ),
    ] = None,
) -> RunRead:
    """Launch an MBPO run: validate -> score -> mine -> train -> evaluate on a GPU worker."""
    run, created = service.create_run(session, jobs, settings, principal, body, idempotency_key)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return RunRead.from_row(run)


@router.get("", response_model=Page[RunRead])
def list_runs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[
        list[RunStatus] | None, Query(description="Only runs in these states (repeatable).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[RunRead]:
    rows = service.list_runs(session, principal, status=status, before=decode_cursor(cursor), limit=limit + 1)
    page = [RunRead.from_row(r) for r in rows[:limit]]
    return Page[RunRead](data=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)


@router.get("/{run_id}", response_model=RunRead, responses=error_responses(404))
def get_run(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> RunRead:
    return RunRead.from_row(service.get_run(session, principal, run_id))


@router.post("/{run_id}/cancel", response_model=RunRead, responses=error_responses(404, 409, 413))
def cancel_run(
    run_id: RunId, session: SessionDep, principal: PrincipalDep, settings: SettingsDep, jobs: JobQueueDep
) -> RunRead:
    """Stop an active run: it saves a checkpoint after its current step and ends `cancelled`.
    A finished run cannot be cancelled (409)."""
    return RunRead.from_row(service.cancel_run(session, jobs, settings, principal, run_id))


@router.post("/{run_id}/resume", response_model=RunRead, responses=error_responses(404, 409, 413))
def resume_run(
    run_id: RunId, session: SessionDep, principal: PrincipalDep, settings: SettingsDep, jobs: JobQueueDep
) -> RunRead:
    """Continue a failed or cancelled run from its last complete checkpoint (409 otherwise)."""
    return RunRead.from_row(service.resume_run(session, jobs, settings, principal, run_id))


@router.get("/{run_id}/events", response_model=EventPage, responses=error_responses(404))
def list_events(
    run_id: RunId,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, le=INT32_MAX, description="Only events with a larger seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventPage:
    events = service.list_events(session, principal, run_id, after, limit)
    return EventPage(
        data=[RunEventRead.model_validate(e, from_attributes=True) for e in events],
        last_seq=events[-1].seq if events else after,
    )


@router.get(
    "/{run_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **error_responses(404),
    },
)
async def stream_events(
    run_id: RunId,
    principal: PrincipalDep,
    settings: SettingsDep,
    factory: FactoryDep,
    after: Annotated[
        int | None, Query(ge=0, le=INT32_MAX, description="Start after this seq (Last-Event-ID wins).")
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=INT32_MAX, description="The seq of the last event received."),
        # A header is a value or absent, never null.
        WithJsonSchema({"type": "integer", "minimum": 0, "maximum": INT32_MAX}),
    ] = None,
) -> StreamingResponse:
    """The run's events as Server-Sent Events (`id:` is the seq): everything after `Last-Event-ID`
    (or `after`), then live; keep-alive comments; the stream ends after the run's terminal event."""
    start = last_event_id if last_event_id is not None else after or 0

    def check() -> None:
        with factory() as session:
            service.get_run(session, principal, run_id)

    await run_in_threadpool(check)
    return StreamingResponse(
        event_stream(factory, settings, run_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{run_id}/metrics", response_model=MetricsRead, responses=error_responses(404))
def get_metrics(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> MetricsRead:
    """Time series by metric name (loss, reward_mean, kl, ... per training step)."""
    series = service.metric_series(session, principal, run_id)
    return MetricsRead(
        run_id=run_id, series={name: [MetricPoint(**p) for p in points] for name, points in series.items()}
    )


@router.get("/{run_id}/negatives", response_model=NegativePage, responses=error_responses(404))
def list_negatives(
    run_id: RunId,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> NegativePage:
    """Mined pairs (chosen = ground truth, rejected = the answer on the perturbed image) with links
    to the clean and perturbed images (authenticated like every /v1 route)."""
    data, total, next_cursor, summary = service.list_negatives(
        session, settings, principal, run_id, cursor, limit
    )
    return NegativePage(data=data, total=total, next_cursor=next_cursor, summary=summary)


@router.get(
    "/{run_id}/negatives/export",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/vnd.apache.parquet": {}},
            "description": "TRL preference dataset: prompt, images, chosen, rejected (docs/api.md)",
        },
        **error_responses(404),
    },
)
def export_negatives(
    run_id: RunId,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    format: Annotated[Literal["parquet"], Query(description="the file format")] = "parquet",
) -> FileResponse:
    """The mined pairs as a TRL-ready preference dataset (parquet: conversational `prompt` with an
    image placeholder, `images` with the clean image's bytes embedded, `chosen`, `rejected`); loads
    with `datasets.load_dataset("parquet", data_files=...)` and trains `trl.DPOTrainer`."""
    handle, name = tempfile.mkstemp(suffix=".parquet", prefix="negatives-")
    os.close(handle)
    out = Path(name)
    try:
        service.export_negatives(session, settings, principal, run_id, out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return FileResponse(
        out,
        media_type="application/vnd.apache.parquet",
        filename=f"{run_id}-pairs.parquet",
        background=BackgroundTask(out.unlink, missing_ok=True),
    )


@router.get("/{run_id}/artefacts", response_model=list[ArtefactRead], responses=error_responses(404))
def list_artefacts(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> list[ArtefactRead]:
    """What the run stored: validation report, IIG scores, mined pairs, mining summary, the aligned
    model directory, the evaluation report."""
    return service.list_artefacts(session, principal, run_id)


@router.get("/{run_id}/checkpoints", response_model=list[CheckpointRead], responses=error_responses(404))
def list_checkpoints(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> list[CheckpointRead]:
    return [
        CheckpointRead(
            step=c.step,
            metrics=c.metrics,
            eval_scores=c.eval_scores,
            created_at=c.created_at,
            download_url=f"/v1/runs/{run_id}/checkpoints/{c.step}/download",
        )
        for c in service.list_checkpoints(session, principal, run_id)
    ]


def _tar_members(files: list[tuple[str, Path]]) -> list[tuple[bytes, Path, int]]:
    members = []
    for name, path in files:
        info = tarfile.TarInfo(name)
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        members.append((info.tobuf(format=tarfile.PAX_FORMAT), path, stat.st_size))
    return members


def _tar_stream(members: list[tuple[bytes, Path, int]]) -> Iterator[bytes]:
    """A tar archive written on the fly (header, content, padding per file; two zero blocks)."""
    for header, path, size in members:
        yield header
        left = size
        with path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:  # the file shrank underneath us: keep the archive well-formed
                    chunk = b"\0" * left
                left -= len(chunk)
                yield chunk
        yield b"\0" * (-size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


@router.get(
    "/{run_id}/checkpoints/{step}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "tar of the model files"},
        **error_responses(404),
    },
)
def download_checkpoint(
    run_id: RunId,
    step: Annotated[int, PathParam(ge=0, le=INT32_MAX)],
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """A tar of the checkpoint's loadable model: safetensors weights, config and processor files
    (loads with `from_pretrained` or as a base model). Nothing else from the run directory."""
    members = _tar_members(service.checkpoint_files(session, settings, principal, run_id, step))
    length = (
        sum(len(h) + size + (-size % tarfile.BLOCKSIZE) for h, _, size in members) + 2 * tarfile.BLOCKSIZE
    )
    return StreamingResponse(
        _tar_stream(members),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{run_id}-step-{step}.tar"',
            "Content-Length": str(length),
        },
    )
