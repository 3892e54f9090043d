"""`mbpo run`: validate -> score -> mine -> train -> evaluate on one machine, without the service.

The run file (YAML) is a `RunSpec`: where the data and the model are, where the run goes, and the
`MBPOConfig` it runs. Paths are relative to the run file. An eval split is a manifest path or a
benchmark from its official files (`{benchmark: pope, data: ..., images: ...}`, docs/benchmarks.md).
Instead of `model`/`pool`/`online`/`eval`, a spec may name a `testbed` to build (or reuse) under
`out/testbed`, the CPU-scale world of docs/method.md (the testbed). The stages are the service's
own (`mbpo_core.pipeline.stages.run_all`), so a local run and a service run write the same
directory and resume the same way:

    out/testbed/          (testbed specs only) datasets/<split>/manifest.jsonl, base_model/
    out/mining/           pairs.jsonl, perturbed/*.png, summary.json
    out/training/         checkpoints/checkpoint-N/, model/            (the aligned model)
    out/eval/             per (model, split) results
    out/report.json       base vs aligned on every eval split, attack success, mining and training
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mbpo_core.config import MBPOConfig, apply_overrides
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource, service_refusal
from mbpo_core.training.progress import ProgressCallback, ProgressEvent

REPORT_NAME = "report.json"


class TestbedSpec(BaseModel):
    """Build the testbed (or reuse one already built under `out/testbed`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    __test__ = False  # not a pytest class despite the name

    size: Literal["quick", "full"] = Field("quick", description="'quick': small splits, short base training.")
    seed: int = Field(0, description="Seed of the scenes, questions and base-model init.")


class BenchmarkEval(BaseModel):
    """An eval split that is a benchmark: its name and files as `mbpo eval benchmark` takes them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    benchmark: str = Field(
        ..., description="A benchmark of docs/benchmarks.md (pope, chair, amber, mme, ...)."
    )
    data: Path = Field(..., description="Its files: a question / query / annotation file or its folder.")
    images: Path | None = Field(None, description="Its image folder (POPE, CHAIR, AMBER).")

    @field_validator("benchmark")
    @classmethod
    def _runnable(cls, name: str) -> str:
        if (refusal := service_refusal(name)) is not None:
            raise ValueError(refusal.message)
        return name

    def source(self) -> BenchmarkSource:
        return BenchmarkSource(self.benchmark, self.data, self.images)


class RunSpec(BaseModel):
    """A whole local run: inputs, output directory and the MBPO configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path = Field(..., description="Run directory (created; re-running resumes).")
    testbed: TestbedSpec | None = Field(None, description="Build/reuse the testbed instead of giving paths.")
    model: Path | None = Field(None, description="Base model directory.")
    pool: Path | None = Field(None, description="Manifest mined for hard negatives (the offline pool).")
    online: Path | None = Field(None, description="Manifest of online GRPO prompts.")
    eval: dict[str, Path | BenchmarkEval] = Field(
        default_factory=dict, description="Eval split name -> manifest, or a benchmark's files."
    )
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
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> RunSpec:
        """Load a run file; relative paths in it are taken relative to the file. `overrides` are
        `dotted.key=value` assignments (`--set`): keys of the spec (`out`, `model`, ...) or of its
        MBPOConfig without the `config.` (`train.learning_rate=1e-5`); their paths are relative to
        the working directory."""
        file = Path(path)
        data = yaml.safe_load(file.read_text()) or {}
        base = file.resolve().parent
        for key in ("out", "model", "pool", "online"):
            if data.get(key) is not None:
                data[key] = str(base / data[key])
        data["eval"] = {name: _relative_to(base, e) for name, e in (data.get("eval") or {}).items()}
        data = apply_overrides(data, overrides, prefix="config", top_level=list(cls.model_fields))
        return cls.model_validate(data)


def _relative_to(base: Path, entry: Any) -> Any:
    """An eval entry of a run file with its paths taken relative to the file."""
    if isinstance(entry, dict):
        return {
            k: str(base / v) if k in ("data", "images") and v is not None else v for k, v in entry.items()
        }
    return str(base / entry)


def run_pipeline(
    spec: RunSpec,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Run every stage of `spec` (resuming what an earlier run of it left); returns report.json."""
    from mbpo_core.pipeline.stages import RunInputs, RunLayout, run_all

    spec.out.mkdir(parents=True, exist_ok=True)
    spec = _with_testbed_paths(spec, _stage_reporter(progress))
    assert spec.model is not None
    inputs = RunInputs(
        model_dir=spec.model,
        offline_manifest=spec.pool,
        online_manifest=spec.online,
        eval_manifests={name: e for name, e in spec.eval.items() if isinstance(e, Path)},
        eval_benchmarks={name: e.source() for name, e in spec.eval.items() if isinstance(e, BenchmarkEval)},
    )
    started = time.monotonic()
    results = run_all(
        inputs,
        RunLayout(spec.out),
        spec.config,
        report=_stage_progress(progress, started),
        should_stop=should_stop,
    )
    evaluation = results["evaluating"]
    report = {
        "base": evaluation["base"],
        "aligned": evaluation["aligned"],
        "delta": evaluation["delta"],
        "significance": evaluation["significance"],
        "benchmarks": evaluation.get("benchmarks", {}),
        "attack": evaluation.get("attack", {}),
        "mining": results["mining"],
        "training": results["training"],
        "elapsed_s": time.monotonic() - started,
        "spec": json.loads(spec.model_dump_json()),
    }
    path = spec.out / REPORT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path


def _stage_progress(progress: ProgressCallback | None, started: float) -> Callable[[Any], None]:
    """The pipeline's StageProgress -> ProgressEvent (stage:phase, done/total, ETA, metrics)."""

    def report(stage: Any) -> None:
        if progress is not None:
            name = f"{stage.stage}:{stage.phase}" if stage.phase else stage.stage
            progress(
                ProgressEvent(
                    stage=name,
                    step=stage.done,
                    total=stage.total,
                    elapsed_s=time.monotonic() - started,
                    eta_s=stage.eta_s,
                    metrics=dict(stage.metrics),
                )
            )

    return report


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
