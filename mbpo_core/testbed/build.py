"""Build the whole testbed: datasets on disk, the biased base model, and the check of its properties.

    DIR/datasets/<split>/manifest.jsonl (+ images/)   every split of `splits.SPLITS`
    DIR/base_model/                                  a plain Hugging Face Qwen2-VL + its processor
    DIR/build_report.json                            sizes, training, metrics, properties, timings

The build checks what the testbed exists to provide and raises `TestbedPropertyError` (after
writing the report) when it does not hold: the model sees (pope_random accuracy) and hallucinates
from the prior (false-"yes" rate on pope_adversarial well above pope_random).

A bad run is not accepted: besides the stuck-run restart inside training, a trained model that
misses a property is first continued for `extend_steps` when it left the plateau (it learns, just
too slowly: seed 2 reached pope_random 0.663 / 0.697 / 0.720 in 2,000 steps from three inits),
otherwise - or if still failing - discarded, and training restarts with the next derived seed,
sharing the bounded `BaseTrainConfig.max_attempts`. Every attempt and extension is logged and
listed in the report's "attempts"; the checks themselves are never relaxed. Deterministic given
the seed; a build whose first run passes costs exactly what it did before.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from mbpo_core.data.manifest import read_manifest
from mbpo_core.evaluation.evaluate import SplitEvaluation, evaluate_manifest
from mbpo_core.models.build import build_processor
from mbpo_core.models.loader import load_adapter
from mbpo_core.testbed.questions import vocabulary
from mbpo_core.testbed.splits import POPE_SPLITS, SPLITS, SplitSizes, build_splits
from mbpo_core.testbed.train_base import (
    BaseTrainConfig,
    TrainingRun,
    TrainReport,
    attempt_seed,
    extend_base_model,
    train_base_model,
)
from mbpo_core.testbed.world import WorldSpec
from mbpo_core.testbed.writer import MANIFEST_NAME, write_split

EVAL_SPLITS = (*POPE_SPLITS, "vqa")


class TestbedPropertyError(RuntimeError):
    """The base model lacks a promised property: it does not see, or does not hallucinate."""

    __test__ = False  # not a pytest test class despite the name


class BuildProgress(Protocol):
    """Where the build reports progress (the CLI draws bars; tests pass `SilentProgress`)."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, n: int = 1, info: str = "") -> None: ...

    def log(self, message: str) -> None: ...


class SilentProgress:
    def start(self, stage: str, total: int) -> None:
        del stage, total

    def advance(self, n: int = 1, info: str = "") -> None:
        del n, info

    def log(self, message: str) -> None:
        del message


@dataclass(frozen=True)
class PropertyThresholds:
    min_random_accuracy: float | None = 0.75  # the model sees
    min_false_yes_gap: float | None = 0.15  # false-yes(adversarial) - false-yes(random): it hallucinates


@dataclass(frozen=True)
class BuildSpec:
    seed: int = 0
    world: WorldSpec = field(default_factory=WorldSpec)
    sizes: SplitSizes = field(default_factory=SplitSizes)
    train: BaseTrainConfig = field(default_factory=BaseTrainConfig)
    thresholds: PropertyThresholds = field(default_factory=PropertyThresholds)
    eval_batch_size: int = 64

    @classmethod
    def full(cls, seed: int = 0) -> BuildSpec:
        return cls(seed=seed, train=BaseTrainConfig(seed=seed))

    @classmethod
    def quick(cls, seed: int = 0) -> BuildSpec:
        """For tests: small splits and a short run; only "beats chance on pope_random" is promised.

        No stuck-run restart: it would double the time (the plateau lasted ~600 steps in trials).
        A run that fails the check is extended by 500 steps, then retrained once (two attempts):
        free when the first run passes."""
        return cls(
            seed=seed,
            sizes=SplitSizes.quick(),
            train=BaseTrainConfig(
                seed=seed, steps=1500, warmup_steps=50, stuck_check_step=0, max_attempts=2, extend_steps=500
            ),
            thresholds=PropertyThresholds(min_random_accuracy=0.58, min_false_yes_gap=None),
        )


def check_properties(metrics: dict[str, dict[str, float]], thresholds: PropertyThresholds) -> list[str]:
    """Human-readable failures (empty when every property holds)."""
    failures = []
    accuracy = metrics["pope_random"]["accuracy"]
    if thresholds.min_random_accuracy is not None and accuracy < thresholds.min_random_accuracy:
        failures.append(
            f"the model does not see well enough: pope_random accuracy {accuracy:.3f} < "
            f"{thresholds.min_random_accuracy}"
        )
    gap = false_yes_gap(metrics)
    if thresholds.min_false_yes_gap is not None and gap < thresholds.min_false_yes_gap:
        failures.append(
            f"the model does not hallucinate the co-occurring partner: false-yes gap adversarial - random "
            f"{gap:+.3f} < {thresholds.min_false_yes_gap}"
        )
    return failures


def next_action(
    failures: list[str],
    attempt: int,
    max_attempts: int,
    *,
    extended: bool,
    left_plateau: bool,
    extend_steps: int,
) -> Literal["extend", "restart"] | None:
    """What to do after training attempt `attempt` (0-based) produced a model with these property
    failures: "extend" it (it left the text-only plateau, so it learns, and was not extended yet),
    "restart" with the next attempt's seed, or None to stop - the model passed, or nothing is left
    to try (then the build fails loudly with the last model's failures)."""
    if not failures:
        return None
    if extend_steps > 0 and left_plateau and not extended:
        return "extend"
    if attempt + 1 < max_attempts:
        return "restart"
    return None


def false_yes_gap(metrics: dict[str, dict[str, float]]) -> float:
    return metrics["pope_adversarial"]["false_yes_rate"] - metrics["pope_random"]["false_yes_rate"]


def anchor_recall(evaluation: SplitEvaluation, manifest: Path, world: WorldSpec) -> dict[str, float]:
    """Recall on POPE positives split by whether the asked object is an anchor (its partner is absent
    in every probe image, so the prior pulls an anchor question toward "no")."""
    anchors = {a.name for a in world.anchors}
    asked = {s.id: s.meta.get("object") for s in read_manifest(manifest)}
    out = {}
    for name, keep in (("anchor_recall", True), ("other_recall", False)):
        positives = [r for r in evaluation.results if r.answer == "yes" and (asked[r.id] in anchors) == keep]
        out[name] = sum(r.correct for r in positives) / len(positives) if positives else 0.0
    return out


def _write_datasets(out: Path, spec: BuildSpec, progress: BuildProgress) -> dict[str, Path]:
    splits = build_splits(spec.seed, spec.world, spec.sizes)
    manifests = {}
    for name in SPLITS:
        samples = splits[name]
        progress.start(f"images {name}", len({s.image_id for s in samples}))
        manifests[name] = write_split(out / "datasets" / name, samples, on_image=progress.advance)
    return manifests


def _train(
    manifest: Path,
    spec: BuildSpec,
    progress: BuildProgress,
    report: TrainReport,
    attempts: list[dict[str, Any]],
    first_attempt: int,
) -> tuple[TrainingRun, TrainReport]:
    """Train from attempt `first_attempt`, restarting stuck runs (appended to `attempts`)."""
    label = "train base model" if first_attempt == 0 else f"train base model (attempt {first_attempt + 1})"
    progress.start(label, spec.train.steps)

    def on_restart(reason: str) -> None:
        attempt = len(attempts)
        attempts.append(
            {
                "attempt": attempt,
                "seed": attempt_seed(spec.train.seed, attempt),
                "outcome": "stuck",
                "reason": reason,
            }
        )
        progress.log(f"stuck run, restarting: {reason}")
        progress.start(f"train base model (attempt {attempt + 2})", spec.train.steps)

    finished: list[TrainingRun] = []
    _, report = train_base_model(
        manifest,
        _processor(spec),
        spec.train,
        on_step=_on_step(progress),
        on_restart=on_restart,
        on_finished=finished.append,
        first_attempt=first_attempt,
        report=report,
    )
    return finished[0], report


def _processor(spec: BuildSpec) -> Any:
    return build_processor("qwen2_vl", vocabulary(), image_size=spec.world.image_size)


def _on_step(progress: BuildProgress) -> Callable[[int, dict[str, float]], None]:
    def on_step(step: int, metrics: dict[str, float]) -> None:
        progress.advance(1, f"loss {metrics['loss']:.3f} yes/no {metrics['yes_no_loss']:.3f}")

    return on_step


def _save(out: Path, model: Any, spec: BuildSpec) -> None:
    target = out / "base_model"
    tmp = out / "base_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _processor(spec).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)  # a rejected earlier attempt's model
    tmp.replace(target)


def _evaluate(
    model_dir: Path, manifests: dict[str, Path], spec: BuildSpec, progress: BuildProgress
) -> tuple[dict[str, dict[str, float]], dict[str, SplitEvaluation], float]:
    """Metrics per evaluation split, the raw evaluations, and evaluation throughput (samples/s)."""
    adapter = load_adapter(model_dir)
    metrics, evaluations = {}, {}
    n_total, start = 0, time.perf_counter()
    for name in EVAL_SPLITS:
        n = len(read_manifest(manifests[name]))
        progress.start(f"evaluate {name}", n)
        evaluation = evaluate_manifest(
            adapter, manifests[name], batch_size=spec.eval_batch_size, on_batch=progress.advance
        )
        metrics[name], evaluations[name] = evaluation.metrics, evaluation
        n_total += n
    return metrics, evaluations, n_total / (time.perf_counter() - start)


def build_testbed(out: str | Path, spec: BuildSpec, progress: BuildProgress | None = None) -> dict[str, Any]:
    """Build everything under `out` (must be empty or absent); returns the report written beside it.

    Raises TestbedPropertyError when the base model misses a property (the report is written first)."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; build into a new directory")
    progress = progress or SilentProgress()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.train.num_threads)
    timings: dict[str, float] = {"datasets_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    attempts: list[dict[str, Any]] = []  # one record per training attempt, stuck or finished
    train_report = TrainReport()
    try:
        start = time.perf_counter()
        manifests = _write_datasets(root, spec, progress)
        timings["datasets_s"] = time.perf_counter() - start
        action: Literal["extend", "restart"] | None = "restart"
        first_attempt, extended = 0, False
        run: TrainingRun | None = None
        while action is not None:
            mark = time.perf_counter()
            if action == "restart":
                run, train_report = _train(
                    manifests["sft"], spec, progress, train_report, attempts, first_attempt
                )
                extended = False
            else:
                assert run is not None
                progress.start(f"extend attempt {run.attempt + 1}", spec.train.extend_steps)
                extend_base_model(run, spec.train, train_report, on_step=_on_step(progress))
                extended = True
            assert run is not None
            _save(root, run.model, spec)
            timings["train_s"] += time.perf_counter() - mark
            mark = time.perf_counter()
            metrics, evaluations, samples_per_s = _evaluate(root / "base_model", manifests, spec, progress)
            timings["eval_s"] += time.perf_counter() - mark
            failures = check_properties(metrics, spec.thresholds)
            attempt = run.attempt
            action = next_action(
                failures,
                attempt,
                spec.train.max_attempts,
                extended=extended,
                left_plateau=train_report.final_yes_no_loss < spec.train.stuck_loss,
                extend_steps=spec.train.extend_steps,
            )
            attempts.append(
                {
                    "attempt": attempt,
                    "seed": attempt_seed(spec.train.seed, attempt),
                    "steps": run.step,
                    "outcome": "failed properties" if failures else "passed",
                    "failures": failures,
                    "final_yes_no_loss": train_report.final_yes_no_loss,
                    "accuracy": {name: m["accuracy"] for name, m in metrics.items()},
                    "false_yes_gap": false_yes_gap(metrics),
                    "next": action,
                }
            )
            if action is not None:
                progress.log(
                    f"attempt {attempt + 1} after {run.step} steps rejected, {action}: {'; '.join(failures)}"
                )
            first_attempt = attempt + 1
        timings["total_s"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    recall = anchor_recall(evaluations["pope_random"], manifests["pope_random"], spec.world)
    report = {
        "seed": spec.seed,
        "sizes": asdict(spec.sizes),
        "splits": {name: len(read_manifest(path)) for name, path in manifests.items()},
        "train": asdict(train_report),
        "attempts": attempts,
        "metrics": metrics,
        "false_yes_gap": false_yes_gap(metrics),
        "positive_recall": recall,
        "eval_samples_per_s": samples_per_s,
        "timings": timings,
        "thresholds": asdict(spec.thresholds),
        "failures": failures,
    }
    (root / "build_report.json").write_text(json.dumps(report, indent=2))
    if failures:
        raise TestbedPropertyError("; ".join(failures))
    return report


def manifest_path(out: str | Path, split: str) -> Path:
    return Path(out) / "datasets" / split / MANIFEST_NAME
