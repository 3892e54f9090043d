"""`mbpo run`: score -> mine -> train -> evaluate on one machine, without the service.

The run file (YAML) is a `RunSpec`: where the data and the model are, where the run goes, and the
`MBPOConfig` it runs. Paths are relative to the run file. Instead of `model`/`pool`/`online`/`eval`,
a spec may name a `testbed` to build (or reuse) under `out/testbed`, the CPU-scale world of DESIGN 5.

    out/testbed/          (testbed specs only) datasets/<split>/manifest.jsonl, base_model/
    out/mining/           pairs.jsonl, perturbed/*.png, summary.json   (mbpo_core.mining)
    out/train/            checkpoints/checkpoint-N/, model/            (the aligned model)
    out/report.json       base vs aligned on every eval split, mining summary, training summary

Every stage is resumable: re-running the same spec continues mining where it stopped and training
from its newest checkpoint; evaluation is recomputed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mbpo_core.config import MBPOConfig
from mbpo_core.training.progress import ProgressCallback, ProgressEvent

REPORT_NAME = "report.json"
# Metrics compared base vs aligned in the report (missing ones, e.g. F1 on VQA, are skipped).
COMPARED_METRICS = ("accuracy", "f1", "precision", "recall", "yes_ratio", "unparsable_rate", "iig_mean")


class TestbedSpec(BaseModel):
    """Build the testbed (or reuse one already built under `out/testbed`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    __test__ = False  # not a pytest class despite the name

    size: Literal["quick", "full"] = Field("quick", description="'quick': small splits, short base training.")
    seed: int = Field(0, description="Seed of the scenes, questions and base-model init.")


class RunSpec(BaseModel):
    """A whole local run: inputs, output directory and the MBPO configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path = Field(..., description="Run directory (created; re-running resumes).")
    testbed: TestbedSpec | None = Field(None, description="Build/reuse the testbed instead of giving paths.")
    model: Path | None = Field(None, description="Base model directory.")
    pool: Path | None = Field(None, description="Manifest mined for hard negatives (the offline pool).")
    online: Path | None = Field(None, description="Manifest of online GRPO prompts.")
    eval: dict[str, Path] = Field(default_factory=dict, description="Eval split name -> manifest.")
    config: MBPOConfig = Field(default_factory=lambda: MBPOConfig.model_validate({}))

    @model_validator(mode="after")
    def _inputs_given_once(self) -> RunSpec:
        explicit = self.model is not None or self.pool is not None
        if self.testbed is not None and (explicit or self.eval or self.online is not None):
            raise ValueError("give either `testbed` or the paths model/pool/online/eval, not both")
        if self.testbed is None and (self.model is None or self.pool is None or not self.eval):
            raise ValueError("without `testbed`, `model`, `pool` and `eval` are required")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunSpec:
        """Load a run file; relative paths are taken relative to the file."""
        file = Path(path)
        data = yaml.safe_load(file.read_text()) or {}
        base = file.resolve().parent
        for key in ("out", "model", "pool", "online"):
            if data.get(key) is not None:
                data[key] = str(base / data[key])
        data["eval"] = {name: str(base / p) for name, p in (data.get("eval") or {}).items()}
        return cls.model_validate(data)


def run_pipeline(
    spec: RunSpec,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Run every stage of `spec`; returns the path of report.json."""
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    report_stage = _stage_reporter(progress)
    spec = _with_testbed_paths(spec, report_stage)
    assert spec.model is not None and spec.pool is not None
    config = spec.config
    timings: dict[str, float] = {}

    start = time.perf_counter()
    mining = _mine(spec, report_stage)
    timings["mining_s"] = time.perf_counter() - start

    from mbpo_core.training.session import train_policy

    start = time.perf_counter()
    training = train_policy(
        spec.model,
        out / "train",
        config,
        online=spec.online,
        pairs=out / "mining" / "pairs.jsonl",
        progress=progress,
        should_stop=should_stop,
        resume=True,
    )
    timings["training_s"] = time.perf_counter() - start
    if training.cancelled or training.model_dir is None:
        raise RuntimeError("training was stopped before it finished; re-run the same spec to resume")

    start = time.perf_counter()
    base = _evaluate(spec.model, spec, report_stage, "base")
    aligned = _evaluate(training.model_dir, spec, report_stage, "aligned")
    attack = {}
    if config.eval.attack_eval:
        attack = {
            label: _attack_success(model_dir, spec, label, report_stage)
            for label, model_dir in (("base", spec.model), ("aligned", training.model_dir))
        }
    timings["evaluation_s"] = time.perf_counter() - start

    report = {
        "base": base,
        "aligned": aligned,
        "delta": compare(base, aligned),
        "attack_eval": attack,
        "mining": mining,
        "training": {
            "steps": training.steps,
            "model": str(training.model_dir),
            "skipped_pairs": training.skipped_pairs,
            "last_log": next((e for e in reversed(training.log_history) if "loss" in e), {}),
        },
        "timings": timings,
        "spec": json.loads(spec.model_dump_json()),
    }
    path = out / REPORT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path


def compare(
    base: dict[str, dict[str, float]], aligned: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """aligned - base for every compared metric of every split both have."""
    return {
        split: {
            k: aligned[split][k] - base[split][k]
            for k in COMPARED_METRICS
            if k in base[split] and k in aligned[split]
        }
        for split in base
        if split in aligned
    }


def _stage_reporter(progress: ProgressCallback | None) -> Callable[[str, int, int], None]:
    started = time.monotonic()

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(ProgressEvent(stage=stage, step=done, total=total, elapsed_s=elapsed, eta_s=None))

    return report


def _with_testbed_paths(spec: RunSpec, report: Callable[[str, int, int], None]) -> RunSpec:
    if spec.testbed is None:
        return spec
    from mbpo_core.testbed.build import EVAL_SPLITS, BuildSpec, build_testbed, manifest_path

    root = spec.out / "testbed"
    if not (root / "build_report.json").exists():
        report("testbed", 0, 1)
        build = (
            BuildSpec.quick(spec.testbed.seed)
            if spec.testbed.size == "quick"
            else BuildSpec.full(spec.testbed.seed)
        )
        build_testbed(root, build)
        report("testbed", 1, 1)
    return spec.model_copy(
        update={
            "model": root / "base_model",
            "pool": manifest_path(root, "offline"),
            "online": manifest_path(root, "online"),
            "eval": {split: manifest_path(root, split) for split in EVAL_SPLITS},
        }
    )


def _mine(spec: RunSpec, report: Callable[[str, int, int], None]) -> dict[str, Any]:
    from mbpo_core.mining import mine
    from mbpo_core.models import load_adapter
    from mbpo_core.training.session import resolve_device, resolve_dtype

    assert spec.model is not None and spec.pool is not None
    device = resolve_device(spec.config.device)
    adapter = load_adapter(spec.model, device=device, dtype=resolve_dtype(spec.config.dtype, device))
    summary = mine(
        adapter,
        spec.pool,
        spec.out / "mining",
        spec.config,
        on_progress=lambda s, d, t: report(f"mining:{s}", d, t),
    )
    result: dict[str, Any] = summary.to_dict()
    return result


def _attack_success(
    model_dir: Path, spec: RunSpec, label: str, report: Callable[[str, int, int], None]
) -> dict[str, Any]:
    """A fresh PGD attack on `model_dir` (DESIGN 2.6): mining's attack on the hardest eval split."""
    from mbpo_core.mining import mine
    from mbpo_core.models import load_adapter
    from mbpo_core.training.session import resolve_device, resolve_dtype

    split = "pope_adversarial" if "pope_adversarial" in spec.eval else sorted(spec.eval)[0]
    device = resolve_device(spec.config.device)
    adapter = load_adapter(model_dir, device=device, dtype=resolve_dtype(spec.config.dtype, device))
    summary = mine(
        adapter,
        spec.eval[split],
        spec.out / "attack_eval" / label,
        spec.config,
        limit=spec.config.eval.limit,
        on_progress=lambda s, d, t: report(f"attack_eval:{label}:{s}", d, t),
    )
    return {
        "split": split,
        "attack_success_rate": summary.attack_success_rate,
        "baseline_random_noise": summary.baseline_random_noise,
    }


def _evaluate(
    model_dir: Path, spec: RunSpec, report: Callable[[str, int, int], None], label: str
) -> dict[str, dict[str, float]]:
    from mbpo_core.evaluation import evaluate_manifest
    from mbpo_core.models import load_adapter
    from mbpo_core.training.session import resolve_device, resolve_dtype

    device = resolve_device(spec.config.device)
    adapter = load_adapter(model_dir, device=device, dtype=resolve_dtype(spec.config.dtype, device))
    settings = spec.config.eval
    metrics = {}
    for i, (split, manifest) in enumerate(sorted(spec.eval.items())):
        report(f"evaluating:{label}", i, len(spec.eval))
        evaluation = evaluate_manifest(
            adapter,
            manifest,
            limit=settings.limit,
            seed=spec.config.seed,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            null_image=spec.config.iig.null_image,
        )
        metrics[split] = evaluation.metrics
    report(f"evaluating:{label}", len(spec.eval), len(spec.eval))
    return metrics
