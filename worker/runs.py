"""Run execution: the pipeline stages under a database lease, recorded as events, progress, metrics,
artefacts and checkpoints. Plain functions; the Celery task (worker.tasks) is a thin shell over
`execute_run`, and tests call it directly.

- A duplicate delivery finds the run leased (or finished) and returns None without work.
- The lease is renewed by a heartbeat thread and by every progress write; every write of the run's
  state is conditioned on still holding it. A worker that lost it stops without writing.
- Between steps the pipeline asks `should_stop`: yes when the run is `cancelling` (the trainer then
  saves a checkpoint) or the lease is gone.
- A crash records `error.code`/`error.message`; a dead worker's lease expires and the sweeper
  (worker.sweeper) re-queues the run or fails it after `max_attempts`.
- Every database write rides through an outage of up to `MBPO_DB_OUTAGE_SECONDS` (each is one short
  transaction, retried with backoff; the pipeline waits meanwhile). A longer outage ends the attempt
  without a word: when the database is back, the lease has expired and the sweeper re-queues the run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import func
from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow
from infra.db.lease import Lease
from infra.db.models import Artefact, Checkpoint, Dataset, Run
from infra.db.outage import DatabaseUnavailable, ride_out
from infra.events.publish import commit_and_publish
from infra.events.store import append_event, json_safe
from infra.runs.lifecycle import (
    ACTIVE,
    CLAIMABLE,
    STAGES,
    RunStatus,
    overall_progress,
    release_lease,
    transition,
)
from infra.runs.repository import ExecutionRepository
from infra.settings import Settings
from mbpo_core.config import MBPOConfig
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource
from mbpo_core.pipeline import stages as pipeline
from mbpo_core.pipeline.stages import PipelineError, RunInputs, RunLayout, StageCancelled, StageProgress
from worker.budget import RunBudget
from worker.metrics import RunExport
from worker.shutdown import stop_requested

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL = 1.0  # seconds between progress writes (training steps are always written)
PROGRESS_EVENT_INTERVAL = 5.0  # seconds between stage_progress events (the log stays readable)
CANCEL_POLL_INTERVAL = 0.05  # seconds between reads of the cancel flag (a quick step can take 0.1 s)
HASHED_FILE_LIMIT = 256 * 1024 * 1024  # artefacts larger than this get no sha256 (weights)


P = ParamSpec("P")
R = TypeVar("R")


RecorderMethod = Callable[Concatenate["RunRecorder", P], R]


def _riding_outages(method: RecorderMethod[P, R]) -> RecorderMethod[P, R]:
    """A recorder method that is one unit of database work: retried while the database is down."""

    @functools.wraps(method)
    def wrapper(self: RunRecorder, *args: P.args, **kwargs: P.kwargs) -> R:
        return ride_out(
            lambda: method(self, *args, **kwargs), self.settings.db_outage_seconds, method.__name__
        )

    return wrapper


# The statuses a run may be in when this worker records how it ended.
FINISH_SOURCES = {
    RunStatus.succeeded: frozenset({RunStatus.evaluating, RunStatus.cancelling}),
    RunStatus.failed: ACTIVE,
    RunStatus.cancelled: frozenset({RunStatus.cancelling}),
}


class LeaseLost(Exception):
    """Another worker owns the run now (or it was finished by someone else): stop, write nothing."""


@dataclass
class RunLease(Lease):
    """The run's lease, renewed by the heartbeat only while the run makes progress.

    The heartbeat thread outlives a hung main thread (a deadlock, a stuck device call); renewing
    regardless would keep the run `running` forever. Progress writes (`renew` with values) count
    as activity; after `stall_seconds` without any, the heartbeat's renewal is refused, the lease
    expires and the sweeper re-queues the run (or fails it after max_attempts)."""

    stall_seconds: float = 3600.0
    last_activity: float = field(default_factory=time.monotonic)

    def renew(self, **values: Any) -> bool:
        now = time.monotonic()
        if values:
            self.last_activity = now
        elif now - self.last_activity > self.stall_seconds:
            log.error(
                "run %s: no progress for %.0f s; giving the lease up", self.row_id, now - self.last_activity
            )
            return False
        return super().renew(**values)


def tracking_environment(settings: Settings) -> dict[str, str]:
    """Where transformers' MLflow and W&B integrations write (`train.report_to`), from the settings."""
    home = settings.home_dir
    return {
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri or f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": settings.mlflow_experiment,
        "WANDB_PROJECT": settings.wandb_project,
        "WANDB_MODE": settings.wandb_mode,
        "WANDB_DIR": str(home),
        "WANDB_SILENT": "true",
    }


def run_layout(settings: Settings, run_id: str) -> RunLayout:
    return RunLayout(settings.run_dir(run_id))


def eval_split_names(datasets: list[Dataset]) -> dict[str, Dataset]:
    """Split names of the eval datasets: their names, made unique with the id when two collide."""
    counts: dict[str, int] = {}
    for d in datasets:
        counts[d.name] = counts.get(d.name, 0) + 1
    return {(d.name if counts[d.name] == 1 else f"{d.name}-{d.id}"): d for d in datasets}


def load_inputs(session: Session, run: Run) -> RunInputs:
    repo = ExecutionRepository(session)
    model = repo.model(run.base_model_id)
    if model is None:
        raise PipelineError("model_missing", f"base model {run.base_model_id} no longer exists")

    def manifest(dataset_id: str | None) -> Path | None:
        if dataset_id is None:
            return None
        dataset = repo.dataset(dataset_id)
        if dataset is None:
            raise PipelineError("dataset_missing", f"dataset {dataset_id} no longer exists")
        return Path(dataset.root_path) / dataset.manifest_name

    eval_rows = [repo.dataset(i) for i in run.eval_dataset_ids]
    if any(row is None for row in eval_rows):
        raise PipelineError("dataset_missing", "an evaluation dataset no longer exists")
    splits = eval_split_names([r for r in eval_rows if r is not None])
    return RunInputs(
        model_dir=Path(model.path),
        offline_manifest=manifest(run.offline_dataset_id),
        online_manifest=manifest(run.online_dataset_id),
        eval_manifests={
            name: Path(d.root_path) / d.manifest_name for name, d in splits.items() if d.benchmark is None
        },
        eval_benchmarks={
            name: BenchmarkSource(
                d.benchmark, Path(d.root_path), Path(d.images_path) if d.images_path else None
            )
            for name, d in splits.items()
            if d.benchmark is not None
        },
    )


@dataclass
class RunRecorder:
    """Everything a run execution writes to the database, conditioned on holding the lease."""

    factory: sessionmaker[Session]
    settings: Settings
    run_id: str
    owner: str
    lease: Lease
    layout: RunLayout
    lost: Any  # threading.Event set by the heartbeat when the lease was lost
    stage_progress: dict[str, float] = field(default_factory=dict)
    recorded_step: int = 0  # highest training step already in run_metrics (from any attempt)
    _last_write: float = 0.0
    _last_event: float = 0.0
    _last_cancel_check: float = 0.0
    _cancel_requested: bool = False
    shutting_down: bool = False  # this worker is stopping (worker.shutdown): hand the run back
    budget: RunBudget | None = None
    over_budget: tuple[str, str] | None = None  # (error code, message) once a budget is exceeded
    _started: float = field(default_factory=time.monotonic)
    _progress_at_start: float = 0.0
    _synced_steps: list[int] | None = None  # checkpoint steps last mirrored into the table
    export: RunExport = field(default_factory=RunExport)  # Prometheus metrics (worker.metrics)

    @_riding_outages
    def load_state(self) -> None:
        with self.factory() as session:
            repo = ExecutionRepository(session)
            run = repo.run(self.run_id)
            assert run is not None
            self.stage_progress = dict(run.stage_progress or {})
            self._progress_at_start = run.progress
            self.recorded_step = repo.last_recorded_step(self.run_id, RunStatus.training)

    # ---- events ----------------------------------------------------------------------------

    @_riding_outages
    def event(
        self,
        type: str,
        message: str,
        *,
        stage: str | None = None,
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.factory() as session:
            event = append_event(session, self.run_id, type, message, stage=stage, level=level, data=data)
            commit_and_publish(session, self.settings, [event])

    @_riding_outages
    def _transition(self, to: RunStatus, sources: frozenset[RunStatus], message: str, **kwargs: Any) -> bool:
        """`lifecycle.transition` while this worker holds the lease; False when it no longer does
        or the run left `sources` (cancelled meanwhile)."""
        with self.factory() as session:
            owned = [Run.lease_owner == self.owner]
            event = transition(
                session, self.run_id, to, sources=sources, message=message, when=owned, **kwargs
            )
            if event is None:
                session.rollback()
                return False
            commit_and_publish(session, self.settings, [event])
            return True

    # ---- cancellation and lease ------------------------------------------------------------

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def should_stop(self) -> bool:
        if self.lost.is_set():
            return True
        if self.budget is not None and self.over_budget is None:
            self.over_budget = self.budget.exceeded()
        if self.over_budget is not None:
            return True
        now = time.monotonic()
        if not self._cancel_requested and now - self._last_cancel_check >= CANCEL_POLL_INTERVAL:
            self._last_cancel_check = now
            row = self._status_and_owner()
            if row is None or row.lease_owner != self.owner:
                self.lost.set()
                return True
            self._cancel_requested = row.status == RunStatus.cancelling
            self.shutting_down = self.shutting_down or stop_requested(self.settings)
        return self._cancel_requested or self.shutting_down

    @_riding_outages
    def _status_and_owner(self) -> Any:
        with self.factory() as session:
            return ExecutionRepository(session).status_and_owner(self.run_id)

    @_riding_outages
    def renew(self, **values: Any) -> bool:
        """Renew the lease, writing `values` with it; False when the lease is lost."""
        return self.lease.renew(**values)

    def holds_lease(self) -> bool:
        """Asked right before a result or checkpoint is published: a fresh read, not the throttled
        one of `should_stop`. A database outage beyond the budget answers no (never write blind)."""
        if self.lost.is_set():
            return False
        try:
            row = self._status_and_owner()
        except DatabaseUnavailable:
            return False
        if row is None or row.lease_owner != self.owner:
            self.lost.set()
            return False
        return True

    def check(self) -> None:
        if self.should_stop():
            raise LeaseLost() if self.lost.is_set() else StageCancelled("between stages")

    # ---- stages ----------------------------------------------------------------------------

    def enter_stage(self, stage: RunStatus) -> None:
        self.check()
        self.stage_progress.setdefault(stage, 0.0)
        entered = self._transition(
            stage,
            CLAIMABLE,
            f"{stage} started",
            values={"stage_progress": dict(self.stage_progress)},
            data={"stage": stage},
        )
        if not entered:  # cancelled meanwhile, or the lease is gone: read the row again to know which
            self._last_cancel_check = 0.0
            self.check()
            raise LeaseLost()

    def on_stage(self, stage: str, result: dict[str, Any] | None) -> None:
        """The pipeline's hook around each stage: enter it (None), or record its result."""
        if result is None:
            self.enter_stage(RunStatus(stage))
        elif self.lost.is_set():
            raise LeaseLost()
        else:
            self.complete_stage(stage, result)

    def report(self, p: StageProgress) -> None:
        """Pipeline progress -> run row (throttled), training metrics and step events (each step once)."""
        if self.lost.is_set():
            return
        self.stage_progress[p.stage] = round(p.fraction, 4)
        is_step = p.step is not None
        now = time.monotonic()
        if not is_step and p.done < p.total and now - self._last_write < PROGRESS_WRITE_INTERVAL:
            return
        self._last_write = now
        self.export.progress(p)
        progress = overall_progress(self.stage_progress)
        values: dict[str, Any] = {
            "stage_progress": dict(self.stage_progress),
            "progress": progress,
            "eta_seconds": self._eta(progress, p.eta_s),
        }
        if is_step:
            p = replace(p, metrics={k: v for k, v in p.metrics.items() if math.isfinite(v)})
            values["latest_metrics"] = {"step": p.step, **p.metrics}
        if not self.renew(**values):
            self.lost.set()
            return
        if is_step:
            self._record_step(p, progress)
        elif p.done >= p.total or now - self._last_event >= PROGRESS_EVENT_INTERVAL:
            self._last_event = now
            self.event(
                "stage_progress",
                f"{p.stage}: {p.done}/{p.total}",
                stage=p.stage,
                data={
                    "done": p.done,
                    "total": p.total,
                    "phase": p.phase,
                    "eta_s": p.eta_s,
                    "progress": progress,
                },
            )

    def _eta(self, progress: float, stage_eta: float | None) -> float | None:
        gained = progress - self._progress_at_start
        if gained >= 0.02:
            return round((time.monotonic() - self._started) / gained * (1 - progress), 1)
        return round(stage_eta, 1) if stage_eta is not None else None

    @_riding_outages
    def _record_step(self, p: StageProgress, progress: float) -> None:
        assert p.step is not None
        if p.step <= self.recorded_step:
            # Re-run after resuming from an earlier checkpoint: the step is already recorded.
            return
        with self.factory() as session:
            ExecutionRepository(session).add_metrics(self.run_id, p.stage, p.step, p.metrics)
            event = append_event(
                session,
                self.run_id,
                "train_step",
                f"step {p.step}/{p.total}",
                stage=p.stage,
                data={
                    "step": p.step,
                    "total": p.total,
                    "eta_s": p.eta_s,
                    "metrics": p.metrics,
                    "progress": progress,
                },
            )
            commit_and_publish(session, self.settings, [event])
        self.recorded_step = p.step
        self.sync_checkpoints()

    def complete_stage(self, stage: str, result: dict[str, Any]) -> None:
        self.stage_progress[stage] = 1.0
        if not self.renew(
            stage_progress=dict(self.stage_progress), progress=overall_progress(self.stage_progress)
        ):
            raise LeaseLost()
        self.register_stage_artefacts(stage, result)
        self.export.stage_completed(stage, result)
        if stage == "training":
            self.sync_checkpoints()
        self.event("stage_completed", f"{stage} done", stage=stage, data=_brief(result))

    # ---- artefacts and checkpoints ------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.settings.home_dir))

    @_riding_outages
    def register_artefact(self, kind: str, path: Path, meta: dict[str, Any] | None = None) -> None:
        if not path.exists():
            return
        size, sha = _size_and_hash(path)
        rel = self._relative(path)
        with self.factory.begin() as session:
            repo = ExecutionRepository(session)
            row = repo.artefact_at(self.run_id, rel)
            if row is None:
                row = Artefact(run_id=self.run_id, kind=kind, path=rel)
                repo.add(row)
            row.size_bytes, row.sha256, row.meta = size, sha, json_safe(meta or {})

    def register_stage_artefacts(self, stage: str, result: dict[str, Any]) -> None:
        layout = self.layout
        if stage == "validating":
            self.register_artefact("validation_report", layout.stage_file(stage))
        elif stage == "scoring":
            self.register_artefact("iig_scores", layout.mining_dir / "iig.jsonl", _brief(result))
        elif stage == "mining":
            meta = {k: result.get(k) for k in ("n_pairs", "attack_success_rate", "prior_agreement_rate")}
            self.register_artefact("mined_pairs", layout.pairs_file, meta)
            self.register_artefact("mining_summary", layout.mining_dir / "summary.json")
        elif stage == "training":
            self.register_artefact("model", layout.final_model_dir, {"steps": result.get("steps")})
            self.register_artefact("tensorboard", layout.tensorboard_archive)
        elif stage == "evaluating":
            self.register_artefact("eval_report", layout.eval_dir / "report.json")

    @_riding_outages
    def sync_checkpoints(self, eval_scores: dict[str, Any] | None = None) -> None:
        """Mirror the complete checkpoints on disk into the table (rotated ones are removed);
        `eval_scores` is attached to the newest one (the model the run publishes)."""
        if eval_scores is None and pipeline.checkpoint_steps(self.layout) == self._synced_steps:
            return
        found = pipeline.list_checkpoints(self.layout)
        steps = {c.step for c in found}
        events = []
        with self.factory() as session:
            repo = ExecutionRepository(session)
            rows = repo.checkpoints_by_step(self.run_id)
            for info in found:
                row = rows.get(info.step)
                if row is None:
                    row = Checkpoint(run_id=self.run_id, step=info.step, path=self._relative(info.path))
                    repo.add(row)
                    events.append(
                        append_event(
                            session,
                            self.run_id,
                            "checkpoint_saved",
                            f"checkpoint at step {info.step}",
                            stage="training",
                            data={"step": info.step, "metrics": info.metrics},
                        )
                    )
                row.complete, row.metrics = True, json_safe(info.metrics)
                if eval_scores is not None and info is found[-1]:
                    row.eval_scores = json_safe(eval_scores)
            gone = [s for s in rows if s not in steps]
            if gone:
                repo.delete_checkpoints(self.run_id, gone)
            commit_and_publish(session, self.settings, events)
        self._synced_steps = sorted(steps)

    # ---- the end -----------------------------------------------------------------------------

    @_riding_outages
    def hand_back(self) -> bool:
        """This worker is stopping: give the lease (and the attempt) back; the run's status stays."""
        with self.factory() as session:
            event = release_lease(
                session,
                self.run_id,
                [Run.lease_owner == self.owner],
                event_type="run_released",
                message="the worker is stopping; the run continues on the next worker from its checkpoint",
                data={"worker": self.owner},
                refund_attempt=True,
                level="info",
            )
            if event is None:
                session.rollback()
                return False
            commit_and_publish(session, self.settings, [event])
            return True

    def finish(self, status: RunStatus, message: str, **values: Any) -> bool:
        values = {
            "finished_at": utcnow(),
            "lease_owner": None,
            "lease_expires_at": None,
            "eta_seconds": None,
            **values,
        }
        data = {k: values[k] for k in ("error_code", "error_message") if values.get(k)}
        return self._transition(status, FINISH_SOURCES[status], message, values=values, data=data)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """A stage result without its bulky parts (fits an event)."""
    return {k: v for k, v in result.items() if k not in {"config", "details", "datasets"}}


def _size_and_hash(path: Path) -> tuple[int, str | None]:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()), None
    size = path.stat().st_size
    if size > HASHED_FILE_LIMIT:
        return size, None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return size, digest.hexdigest()


def execute_run(
    factory: sessionmaker[Session],
    settings: Settings,
    run_id: str,
    *,
    owner: str,
    requeue: Callable[[str], None] | None = None,
) -> str | None:
    """Run (or continue) run `run_id` to a terminal state. Returns that state, or None when the run
    was not claimable (a duplicate message, someone else's lease, already finished), the lease
    was lost midway, or this worker is stopping: the run is then handed back (worker.shutdown) and
    `requeue(run_id)` sends it again."""
    lease = RunLease(
        factory, Run, run_id, owner, timedelta(seconds=settings.lease_seconds), settings.run_stall_seconds
    )
    claimed = ride_out(
        lambda: lease.claim(list(CLAIMABLE), started_at=func.coalesce(Run.started_at, utcnow())),
        settings.db_outage_seconds,
        "claim",
    )
    if not claimed:
        log.info("run %s: not claimable (finished, cancelled, or leased by another worker)", run_id)
        return None
    layout = run_layout(settings, run_id)
    layout.root.mkdir(parents=True, exist_ok=True)
    os.environ.update(tracking_environment(settings))  # one run at a time per worker process
    with lease.keep_alive() as lost:
        recorder = RunRecorder(factory, settings, run_id, owner, lease, layout, lost)
        # Results reach the run directory only while this worker holds the lease (RunLayout.may_write).
        recorder.layout = layout = replace(layout, may_write=recorder.holds_lease)

        def end_at_once(code: str, message: str) -> None:  # the budget's last resort (worker.budget)
            recorder.finish(
                RunStatus.failed, f"run failed: {message}", error_code=code, error_message=message
            )

        recorder.budget = RunBudget.from_settings(settings, end_at_once)
        recorder.budget.start()
        try:
            return _execute(recorder, factory, layout, requeue)
        except LeaseLost:
            log.warning("run %s: lease lost; leaving the run to its new owner", run_id)
            return None
        except DatabaseUnavailable as exc:
            # Nothing can be recorded now. The lease expires; once the database is back the sweeper
            # re-queues the run from its last checkpoint (an attempt spent) or fails it.
            log.error("run %s: attempt abandoned: %s", run_id, exc)
            return None
        finally:
            recorder.budget.stop()
            pipeline.release_models()


def _execute(
    recorder: RunRecorder,
    factory: sessionmaker[Session],
    layout: RunLayout,
    requeue: Callable[[str], None] | None,
) -> str | None:
    recorder.load_state()

    def read_run() -> tuple[int, MBPOConfig, RunInputs]:
        with factory() as session:
            run = ExecutionRepository(session).run(recorder.run_id)
            assert run is not None
            return run.attempt, MBPOConfig.model_validate(run.config), load_inputs(session, run)

    try:
        attempt, config, inputs = ride_out(read_run, recorder.settings.db_outage_seconds, "read run")
    except (PipelineError, ValueError) as exc:
        code = exc.code if isinstance(exc, PipelineError) else "invalid_config"
        return _fail(recorder, code, str(exc))
    recorder.event(
        "run_started", f"attempt {attempt} started", data={"attempt": attempt, "worker": recorder.owner}
    )
    try:
        results = pipeline.run_all(
            inputs, layout, config, recorder.report, recorder.should_stop, on_stage=recorder.on_stage
        )
    except StageCancelled:
        if recorder.lost.is_set():
            raise LeaseLost() from None
        recorder.sync_checkpoints()
        if recorder.over_budget is not None:
            return _fail(recorder, *recorder.over_budget)
        if recorder.shutting_down and not recorder.cancel_requested:
            if recorder.hand_back() and requeue is not None:
                requeue(recorder.run_id)
            return None
        recorder.finish(RunStatus.cancelled, "run cancelled")
        return RunStatus.cancelled
    except PipelineError as exc:
        return _fail(recorder, exc.code, exc.message)
    except (LeaseLost, DatabaseUnavailable):
        raise
    except Exception as exc:
        log.exception("run %s: crashed", recorder.run_id)
        if recorder.lost.is_set():
            raise LeaseLost() from exc
        return _fail(recorder, "internal_error", f"{type(exc).__name__}: {exc}")
    scores = results["evaluating"]
    recorder.sync_checkpoints(eval_scores=scores)
    done = recorder.finish(
        RunStatus.succeeded,
        "run succeeded",
        scores=json_safe(scores),
        progress=1.0,
        stage_progress={s: 1.0 for s in STAGES},
    )
    return RunStatus.succeeded if done else None


def _fail(recorder: RunRecorder, code: str, message: str) -> str | None:
    done = recorder.finish(RunStatus.failed, f"run failed: {message}", error_code=code, error_message=message)
    return RunStatus.failed if done else None
