"""The stages of an MBPO run, shared by the service's worker and `mbpo run`:

    validate -> score -> mine -> train -> evaluate

Each stage is a function of explicit inputs (`RunInputs`: model and manifests), the run directory
(`RunLayout`) and the `MBPOConfig`, reporting `StageProgress` to a callback and polling a
`should_stop` function. Every stage is idempotent and resumable from what an earlier attempt left
in the run directory:

- a finished stage writes `stages/<stage>.json` (atomically); calling it again returns that result;
- `score` caches IIG per sample in `mining/iig.jsonl` (which `mine` then reuses);
- `mine` skips the ids already in `mining/records.jsonl`;
- `train` continues from the newest complete checkpoint in `training/checkpoints/`;
- `evaluate` caches each (model, split) result under `eval/`, so the base model is scored once.

An eval split is a manifest (`RunInputs.eval_manifests`) or a benchmark from its official files
(`RunInputs.eval_benchmarks`, docs/benchmarks.md): a benchmark is scored by its own runner and
scorer, exactly as `mbpo eval benchmark`, and its metric tables go under `benchmarks` in the result.

A stop request raises `StageCancelled` at a safe point (after a mining batch, after a training
step with a checkpoint saved, after an evaluation batch); nothing already written is lost.
A full disk is a `PipelineError("disk_full")`: the half-written files are removed and the complete
checkpoints stay, so the run resumes once there is space.
The stages wrap the core functions (`mining.mine`, `training.session.train_policy`,
`evaluation.evaluate_manifest`), they do not re-implement them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import statistics
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mbpo_core.config import MBPOConfig
from mbpo_core.data.manifest import ManifestError, read_manifest
from mbpo_core.data.verifiers import CLOSED_TASKS
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem, MetricTables
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource
from mbpo_core.evaluation.compare import metric_deltas
from mbpo_core.models.info import ModelDirError, inspect_model_dir

STAGES = ("validating", "scoring", "mining", "training", "evaluating")
BASE, ALIGNED = "base", "aligned"


class StageCancelled(Exception):
    """A stop was requested; the stage stopped at a safe point and a re-run continues from there."""


class PipelineError(Exception):
    """The run cannot proceed with these inputs; `code` is stable, the message says what to fix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StageProgress:
    """Where a stage stands: `done` of `total` units (samples, steps). `phase` names a sub-step
    (scan, iig, attack, base:<split>, aligned:<split>); training sets `step` and `metrics`."""

    stage: str
    done: int
    total: int
    phase: str = ""
    eta_s: float | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total > 0 else 0.0


Reporter = Callable[[StageProgress], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class RunInputs:
    """What a run reads: the base model directory and manifests; the eval splits by name, each a
    manifest or a benchmark (the names of the two dicts do not overlap)."""

    model_dir: Path
    offline_manifest: Path | None = None
    online_manifest: Path | None = None
    eval_manifests: dict[str, Path] = field(default_factory=dict)
    eval_benchmarks: dict[str, BenchmarkSource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if both := set(self.eval_manifests) & set(self.eval_benchmarks):
            raise PipelineError("invalid_dataset", f"eval split names used twice: {', '.join(sorted(both))}")


@dataclass(frozen=True)
class RunLayout:
    """The run directory: everything a run writes lives below `root`.

    `may_write`, when given, is asked right before a result is published (a stage's result file,
    a checkpoint's rename into place): the service's worker answers whether it still holds the
    run's lease, so a worker that lost it (another one resumed the run) writes nothing more."""

    root: Path
    may_write: Callable[[], bool] | None = field(default=None, compare=False)

    def check_write(self) -> None:
        """`StageCancelled` when this process may no longer write into the run directory."""
        if self.may_write is not None and not self.may_write():
            raise StageCancelled("the run's lease was lost: not writing")

    def write_json(self, path: Path, data: Any) -> None:
        """Write `path` atomically (temp file + rename), if this process may still write."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        self.check_write()
        os.replace(tmp, path)

    @property
    def mining_dir(self) -> Path:
        return self.root / "mining"

    @property
    def pairs_file(self) -> Path:
        return self.mining_dir / "pairs.jsonl"

    @property
    def training_dir(self) -> Path:
        return self.root / "training"

    @property
    def checkpoints_dir(self) -> Path:
        from mbpo_core.training.session import CHECKPOINTS_SUBDIR

        return self.training_dir / CHECKPOINTS_SUBDIR

    @property
    def final_model_dir(self) -> Path:
        from mbpo_core.training.session import FINAL_MODEL_SUBDIR

        return self.training_dir / FINAL_MODEL_SUBDIR

    @property
    def tensorboard_archive(self) -> Path:
        """The TensorBoard event files of training (`train.report_to: [tensorboard]`), as one download."""
        return self.training_dir / "tensorboard.tar.gz"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def stage_file(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"


# ---- shared helpers ----------------------------------------------------------------------------


def finished_result(layout: RunLayout, stage: str) -> dict[str, Any] | None:
    """The stored result of a finished stage, or None."""
    path = layout.stage_file(stage)
    if not path.is_file():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


class _Progress:
    """Turns (done, total) updates into `StageProgress` with an ETA at the pace so far, and raises
    `StageCancelled` when a stop was requested (called at the core's safe points)."""

    def __init__(self, stage: str, report: Reporter | None, should_stop: ShouldStop | None):
        self.stage = stage
        self.report = report
        self.should_stop = should_stop
        self.start = time.monotonic()
        self.first_done: int | None = None

    def __call__(self, done: int, total: int, phase: str = "") -> None:
        if self.report is not None:
            self.report(StageProgress(self.stage, done, total, phase, eta_s=self._eta(done, total)))
        self.check_stop()

    def _eta(self, done: int, total: int) -> float | None:
        if self.first_done is None:
            self.first_done, self.start = done, time.monotonic()
            return None
        rate_done = done - self.first_done
        if rate_done <= 0 or total <= 0:
            return None
        return (time.monotonic() - self.start) / rate_done * max(total - done, 0)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise StageCancelled(self.stage)


_adapters: dict[tuple[str, str, str], Any] = {}


def _adapter(model_dir: Path, config: MBPOConfig) -> Any:
    """The model for scoring, mining and evaluation, loaded once per (dir, device, dtype)."""
    from mbpo_core.models.device import resolve_device, resolve_dtype
    from mbpo_core.models.loader import load_adapter

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    key = (str(model_dir.resolve()), device, str(dtype))
    if key not in _adapters:
        _adapters[key] = load_adapter(model_dir, device=device, dtype=dtype)
    return _adapters[key]


def release_models() -> None:
    """Drop cached models (before training, which loads its own, and at the end of a run)."""
    _adapters.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency of the core
        pass


# ---- validate ----------------------------------------------------------------------------------


def _check_manifest(role: str, path: Path) -> dict[str, Any]:
    try:
        samples = read_manifest(path)
    except (ManifestError, OSError) as exc:
        raise PipelineError("invalid_dataset", f"{role} dataset {path}: {exc}") from exc
    if not samples:
        raise PipelineError("invalid_dataset", f"{role} dataset {path} has no samples")
    return {"samples": len(samples), "tasks": dict(Counter(s.task for s in samples))}


def _benchmark_items(role: str, source: BenchmarkSource, limit: int | None = None) -> list[BenchmarkItem]:
    try:
        items = source.load(limit)
    except (BenchmarkDataError, ValueError, OSError) as exc:
        raise PipelineError("invalid_dataset", f"{role} benchmark {source.name}: {exc}") from exc
    if not items:
        raise PipelineError("invalid_dataset", f"{role} benchmark {source.name} ({source.data}) has no items")
    return items


def validate(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Check the model directory and every manifest before any compute is spent."""
    progress = _Progress("validating", report, should_stop)
    try:
        info = inspect_model_dir(inputs.model_dir)
    except ModelDirError as exc:
        raise PipelineError("invalid_model", f"base model {inputs.model_dir}: {exc}") from exc
    if inputs.offline_manifest is None and inputs.online_manifest is None:
        raise PipelineError("no_training_data", "a run needs an offline (mining) or an online dataset")
    roles = {"offline": inputs.offline_manifest, "online": inputs.online_manifest}
    roles.update({f"eval:{name}": path for name, path in inputs.eval_manifests.items()})
    datasets: dict[str, Any] = {}
    present = {role: path for role, path in roles.items() if path is not None}
    checks = len(present) + len(inputs.eval_benchmarks)
    for i, (role, path) in enumerate(present.items()):
        datasets[role] = _check_manifest(role, path)
        progress(i + 1, checks, role)
    for i, (name, source) in enumerate(inputs.eval_benchmarks.items(), start=len(present)):
        role = f"eval:{name}"
        datasets[role] = {"benchmark": source.name, "items": len(_benchmark_items(role, source))}
        progress(i + 1, checks, role)
    online = datasets.get("online")
    if online is not None and not CLOSED_TASKS & set(online["tasks"]):
        raise PipelineError(
            "invalid_dataset",
            "the online dataset has no close-ended samples (yes_no, multiple_choice, number): "
            "online GRPO needs verifiable answers",
        )
    from mbpo_core.training.arguments import missing_trackers
    from mbpo_core.training.rewards import RewardPluginError, load_reward_funcs

    try:
        load_reward_funcs(config.train.reward_funcs)
    except RewardPluginError as exc:
        raise PipelineError("unknown_reward", str(exc)) from exc
    if missing := missing_trackers(config.train.report_to):
        raise PipelineError(
            "tracking_unavailable",
            f"train.report_to: {', '.join(missing)} not installed on this worker "
            "(pip install 'mbpo[tracking]' there, or remove it from report_to)",
        )
    result = {
        "model": {"family": info.family, "param_count": info.param_count},
        "datasets": datasets,
    }
    layout.write_json(layout.stage_file("validating"), result)
    return result


# ---- score -------------------------------------------------------------------------------------


def score(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """IIG of every offline sample's ground truth (cached in mining/iig.jsonl) and the selection
    `mine` will attack: the top `iig.keep_fraction` (or IIG >= `iig.min_iig`), at most `mining.limit`."""
    if (cached := finished_result(layout, "scoring")) is not None:
        return cached
    if inputs.offline_manifest is None:
        result: dict[str, Any] = {"skipped": "no offline dataset"}
        layout.write_json(layout.stage_file("scoring"), result)
        return result
    from mbpo_core.mining import mine as mining

    progress = _Progress("scoring", report, should_stop)
    adapter = _adapter(inputs.model_dir, config)
    layout.mining_dir.mkdir(parents=True, exist_ok=True)

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "iig":
            progress(done, total, phase)
        else:
            progress.check_stop()

    pool, skipped, n_input = mining.scan_pool(adapter, inputs.offline_manifest, on_progress)
    scores, failed = mining.score_iig(adapter, pool, config, layout.mining_dir / "iig.jsonl", on_progress)
    skipped.update(failed.values())
    scored = [p.sample.id for p in pool if p.sample.id in scores]
    selected = mining.select_by_iig(
        scored,
        scores,
        keep_fraction=config.iig.keep_fraction,
        min_iig=config.iig.min_iig,
        limit=config.mining.limit,
    )
    values = [scores[i] for i in scored]
    result = {
        "n_input": n_input,
        "n_scored": len(scored),
        "n_selected": len(selected),
        "skipped": dict(sorted(skipped.items())),
        "iig_mean": statistics.fmean(values) if values else None,
        "iig_median": statistics.median(values) if values else None,
        "iig_threshold": min(scores[i] for i in selected) if selected else None,
        "iig_selected_mean": statistics.fmean(scores[i] for i in selected) if selected else None,
    }
    layout.write_json(layout.stage_file("scoring"), result)
    return result


# ---- mine --------------------------------------------------------------------------------------


def mine(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Adversarial hard negatives from the IIG-selected samples into mining/ (pairs.jsonl, PNGs,
    summary.json); resumable batch by batch."""
    if (cached := finished_result(layout, "mining")) is not None:
        return cached
    if inputs.offline_manifest is None:
        result: dict[str, Any] = {"skipped": "no offline dataset", "n_pairs": 0}
        layout.write_json(layout.stage_file("mining"), result)
        return result
    from mbpo_core.mining import mine as mining
    from mbpo_core.mining.attack import Interrupted

    progress = _Progress("mining", report, should_stop)

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "attack":
            progress(done, total, phase)
        else:
            progress.check_stop()

    try:
        summary = mining.mine(
            _adapter(inputs.model_dir, config),
            inputs.offline_manifest,
            layout.mining_dir,
            config,
            on_progress=on_progress,
            should_stop=should_stop,
        )
    except Interrupted as exc:
        raise StageCancelled("mining") from exc
    except ValueError as exc:  # the directory was mined with other settings
        raise PipelineError("mining_settings_changed", str(exc)) from exc
    result = summary.to_dict()
    layout.write_json(layout.stage_file("mining"), result)
    return result


# ---- train -------------------------------------------------------------------------------------


def train(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Hybrid GRPO on the mined pairs and the online prompts into training/, resuming from the
    newest complete checkpoint. A stop request saves a checkpoint and raises StageCancelled."""
    if (cached := finished_result(layout, "training")) is not None:
        return cached
    from mbpo_core.training.checkpoint import WriteFenced
    from mbpo_core.training.progress import ProgressEvent
    from mbpo_core.training.session import train_policy

    has_pairs = layout.pairs_file.is_file() and layout.pairs_file.stat().st_size > 0
    if not has_pairs and inputs.online_manifest is None:
        raise PipelineError(
            "no_training_data",
            "mining found no hard negatives and the run has no online dataset: nothing to train on "
            "(try a larger mining.limit, a larger attack.eps, or add an online dataset)",
        )

    def on_event(event: ProgressEvent) -> None:
        if report is not None:
            report(
                StageProgress(
                    "training",
                    event.step,
                    event.total,
                    "step",
                    eta_s=event.eta_s,
                    step=event.step,
                    metrics=dict(event.metrics),
                )
            )

    release_models()
    try:
        result = train_policy(
            inputs.model_dir,
            layout.training_dir,
            config,
            online=inputs.online_manifest,
            pairs=layout.pairs_file if has_pairs else None,
            progress=on_event,
            should_stop=should_stop,
            may_write=layout.may_write,
            resume=True,
        )
    except WriteFenced as exc:
        raise StageCancelled(str(exc)) from exc
    if result.cancelled:
        raise StageCancelled("training")
    final_metrics: dict[str, Any] = next((log for log in reversed(result.log_history) if "loss" in log), {})
    summary = {
        "steps": result.steps,
        "model_dir": str(result.model_dir.relative_to(layout.root)) if result.model_dir else None,
        "skipped_pairs": result.skipped_pairs,
        "final_log": {k: v for k, v in final_metrics.items() if isinstance(v, int | float)},
    }
    _archive_tensorboard(layout)
    layout.write_json(layout.stage_file("training"), summary)
    return summary


def _archive_tensorboard(layout: RunLayout) -> None:
    from mbpo_core.training.arguments import TENSORBOARD_SUBDIR

    logs = layout.training_dir / TENSORBOARD_SUBDIR
    if not logs.is_dir():
        return
    tmp = layout.tensorboard_archive.with_name(f".{layout.tensorboard_archive.name}.tmp")
    with tarfile.open(tmp, "w:gz") as archive:
        archive.add(logs, arcname=TENSORBOARD_SUBDIR)
    layout.check_write()
    os.replace(tmp, layout.tensorboard_archive)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path  # the checkpoint directory (resume state + model/)
    model_dir: Path  # its loadable model (safetensors, config, processor files)
    metrics: dict[str, float]


def checkpoint_steps(layout: RunLayout) -> list[int]:
    """Steps of the complete checkpoints (a directory listing: cheap enough to call every step)."""
    from mbpo_core.training import checkpoint

    return checkpoint.checkpoint_steps(layout.checkpoints_dir)


def list_checkpoints(layout: RunLayout) -> list[CheckpointInfo]:
    """The complete checkpoints of the run, oldest first, with the logged metrics of their step."""
    from mbpo_core.training import checkpoint
    from mbpo_core.training.progress import select_metrics

    out = []
    for step in checkpoint.checkpoint_steps(layout.checkpoints_dir):
        path = layout.checkpoints_dir / f"checkpoint-{step}"
        metrics: dict[str, float] = {}
        state = path / "trainer_state.json"
        if state.is_file():
            history = json.loads(state.read_text()).get("log_history", [])
            logged = [entry for entry in history if entry.get("step") == step and "loss" in entry]
            if logged:
                metrics = select_metrics(logged[-1])
        out.append(CheckpointInfo(step, path, path / checkpoint.MODEL_SUBDIR, metrics))
    return out


# ---- evaluate ----------------------------------------------------------------------------------


def evaluate(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Base and aligned model on every eval split, side by side, and whether each change is
    significant (`significance`: paired bootstrap intervals and McNemar, mbpo_core.evaluation.stats).
    Each (model, split) result is cached in eval/<model>/<split>.json with its answers in
    <split>.samples.json, so a resumed run (or a second evaluation) skips it.

    A benchmark split is scored by the benchmark's runner and scorer with its own answer length
    (`eval.limit`: its first N items, as `mbpo eval benchmark --limit`); `benchmarks` holds, per
    split, the benchmark's name, its item count, its metric tables for base, aligned and their
    delta, and the scorer's order of their rows and metrics. Cached in
    eval/<model>/benchmarks/<split>.json, the answers in <split>.answers.jsonl."""
    if (cached := finished_result(layout, "evaluating")) is not None:
        return cached
    from mbpo_core.evaluation.evaluate import SampleResult, balanced_subset, evaluate_manifest
    from mbpo_core.evaluation.stats import compare_split

    models = {BASE: inputs.model_dir, ALIGNED: layout.final_model_dir}
    if not (layout.final_model_dir / "config.json").is_file():
        raise PipelineError("no_aligned_model", f"training left no model in {layout.final_model_dir}")
    sizes = {
        name: len(balanced_subset(read_manifest(path), config.eval.limit, config.seed))
        for name, path in inputs.eval_manifests.items()
    }
    items = {
        name: _benchmark_items(f"eval:{name}", source, config.eval.limit)
        for name, source in inputs.eval_benchmarks.items()
    }
    total = 2 * (sum(sizes.values()) + sum(len(i) for i in items.values()))
    progress = _Progress("evaluating", report, should_stop)
    done = 0
    scores: dict[str, dict[str, dict[str, float]]] = {BASE: {}, ALIGNED: {}}
    answers: dict[str, dict[str, list[SampleResult]]] = {BASE: {}, ALIGNED: {}}
    tables: dict[str, dict[str, MetricTables]] = {BASE: {}, ALIGNED: {}}
    for which, model_dir in models.items():
        for split, manifest in inputs.eval_manifests.items():
            cache = layout.eval_dir / which / f"{split}.json"
            samples = layout.eval_dir / which / f"{split}.samples.json"
            if cache.is_file() and samples.is_file():
                scores[which][split] = json.loads(cache.read_text())
                answers[which][split] = [SampleResult(**row) for row in json.loads(samples.read_text())]
                done += sizes[split]
                progress(done, total, f"{which}:{split}")
                continue

            def on_batch(n: int, which: str = which, split: str = split) -> None:
                nonlocal done
                done += n
                progress(done, total, f"{which}:{split}")

            evaluation = evaluate_manifest(
                _adapter(model_dir, config),
                manifest,
                limit=config.eval.limit,
                seed=config.seed,
                batch_size=config.eval.batch_size,
                max_new_tokens=config.eval.max_new_tokens,
                null_image=config.iig.null_image,
                on_batch=on_batch,
            )
            scores[which][split] = evaluation.metrics
            answers[which][split] = evaluation.results
            layout.write_json(samples, [asdict(r) for r in evaluation.results])
            layout.write_json(cache, evaluation.metrics)
        for split, source in inputs.eval_benchmarks.items():

            def on_items(n: int, which: str = which, split: str = split) -> None:
                nonlocal done
                done += n
                progress(done, total, f"{which}:{split}")

            tables[which][split] = _benchmark_tables(
                model_dir,
                layout.eval_dir / which / "benchmarks" / split,
                source,
                items[split],
                layout,
                config,
                on_items,
            )
        release_models()  # one model in memory at a time
    result: dict[str, Any] = {
        BASE: scores[BASE],
        ALIGNED: scores[ALIGNED],
        "delta": metric_deltas(scores[BASE], scores[ALIGNED]),
        "significance": {
            split: compare_split(answers[BASE][split], answers[ALIGNED][split], seed=config.seed)
            for split in inputs.eval_manifests
        },
    }
    if inputs.eval_benchmarks:
        result["benchmarks"] = {
            split: {
                "benchmark": source.name,
                "items": len(items[split]),
                **_table_order(tables[BASE][split]),
                BASE: tables[BASE][split],
                ALIGNED: tables[ALIGNED][split],
                "delta": metric_deltas(tables[BASE][split], tables[ALIGNED][split]),
            }
            for split, source in inputs.eval_benchmarks.items()
        }
    if config.eval.attack_eval and inputs.eval_manifests:
        result["attack"] = {
            which: _attack_success(model_dir, which, inputs, layout, config, progress)
            for which, model_dir in models.items()
        }
    layout.write_json(layout.eval_dir / "report.json", result)
    layout.write_json(layout.stage_file("evaluating"), result)
    return result


def _table_order(tables: MetricTables) -> dict[str, list[str]]:
    """The rows and metrics in the scorer's order (a JSON object's order does not survive JSONB)."""
    metrics: dict[str, None] = {}
    for row in tables.values():
        metrics.update(dict.fromkeys(row))
    return {"rows": list(tables), "metrics": list(metrics)}


def _benchmark_tables(
    model_dir: Path,
    stem: Path,
    source: BenchmarkSource,
    items: list[BenchmarkItem],
    layout: RunLayout,
    config: MBPOConfig,
    on_items: Callable[[int], None],
) -> MetricTables:
    """One model's metric tables on one benchmark split, cached in `stem`.json with the answers in
    `stem`.answers.jsonl (as `mbpo eval benchmark --out` writes them)."""
    cache = stem.with_name(f"{stem.name}.json")
    if cache.is_file():
        on_items(len(items))
        tables: MetricTables = json.loads(cache.read_text())
        return tables
    from mbpo_core.evaluation.benchmarks.runner import evaluate_benchmark, write_predictions

    result = evaluate_benchmark(
        _adapter(model_dir, config),
        source.module,
        items,
        batch_size=config.eval.batch_size,
        on_batch=on_items,
    )
    write_predictions(stem.with_name(f"{stem.name}.answers.jsonl"), items, result.answers)
    layout.write_json(cache, result.metrics)
    return result.metrics


def _attack_success(
    model_dir: Path, which: str, inputs: RunInputs, layout: RunLayout, config: MBPOConfig, progress: _Progress
) -> dict[str, Any]:
    """A fresh PGD attack on a model (docs/method.md §6): mining's attack on the hardest eval split, at most
    `eval.limit` samples, resumable in eval/attack/<model>/."""
    from mbpo_core.mining import mine as mining

    names = sorted(inputs.eval_manifests)
    split = next((name for name in names if name.endswith("pope_adversarial")), names[0])

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "attack":  # the split's evaluation is complete; this is its attack phase
            progress(1, 1, f"attack:{which} {done}/{total}")
        else:
            progress.check_stop()

    summary = mining.mine(
        _adapter(model_dir, config),
        inputs.eval_manifests[split],
        layout.eval_dir / "attack" / which,
        config,
        limit=config.eval.limit,
        on_progress=on_progress,
    )
    release_models()
    return {
        "split": split,
        "attack_success_rate": summary.attack_success_rate,
        "baseline_random_noise": summary.baseline_random_noise.get("attack_success_rate"),
        "n_attacked": summary.n_selected,
    }


StageFn = Callable[[RunInputs, RunLayout, MBPOConfig, Reporter | None, ShouldStop | None], dict[str, Any]]

STAGE_FUNCTIONS: dict[str, StageFn] = {
    "validating": validate,
    "scoring": score,
    "mining": mine,
    "training": train,
    "evaluating": evaluate,
}


def run_all(
    inputs: RunInputs,
    layout: RunLayout,
    config: MBPOConfig,
    report: Reporter | None = None,
    should_stop: ShouldStop | None = None,
    on_stage: Callable[[str, dict[str, Any] | None], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every stage in order (what `mbpo run` does); `on_stage(stage, None)` before a stage and
    `on_stage(stage, result)` after it. Returns the results by stage."""
    results: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if on_stage is not None:
            on_stage(stage, None)
        try:
            results[stage] = STAGE_FUNCTIONS[stage](inputs, layout, config, report, should_stop)
        except Exception as exc:
            if not is_disk_full(exc, layout.root):
                raise
            raise _disk_full(stage, layout) from exc
        if on_stage is not None:
            on_stage(stage, results[stage])
    return results


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How libraries that do not raise OSError say it (safetensors: "I/O error: No space left on device").
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")
_LOW_FREE_BYTES = 64 * 1024 * 1024


def is_disk_full(exc: BaseException, root: Path) -> bool:
    """Whether `exc` (or what caused it) is a write that failed for want of space under `root`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(word in str(current) for word in _DISK_FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    # torch.save says only "unexpected pos" / "iostream error": judge by the space that is left
    # (a failed write leaves its partial file, so a disk that filled up is still full now).
    free = _free_bytes(root)
    return free is not None and free < _LOW_FREE_BYTES


def _free_bytes(root: Path) -> int | None:
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return None


def _disk_full(stage: str, layout: RunLayout) -> PipelineError:
    from mbpo_core.training import checkpoint

    checkpoint.discard_partial(layout.checkpoints_dir)
    free_mib = (_free_bytes(layout.root) or 0) / 2**20
    steps = checkpoint.checkpoint_steps(layout.checkpoints_dir)
    kept = f"the checkpoint of step {steps[-1]} is complete" if steps else "no checkpoint was lost"
    return PipelineError(
        "disk_full",
        f"no space left on the device of {layout.root} during {stage} ({free_mib:.0f} MiB free after "
        f"removing the half-written files); {kept}. Free some space and resume the run.",
    )
