"""A benchmark as a run's eval split, without the service: the run file names it with its files
(relative to the file), an unknown one is refused, and the validating stage runs its loader so a
broken file stops the run before any compute, naming the file and line; `mbpo run` reports the
benchmark's tables. (The service's runs: tests/worker/test_benchmark_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mbpo_core.config import MBPOConfig
from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource
from mbpo_core.pipeline import stages as pipeline
from mbpo_core.pipeline.spec import BenchmarkEval, RunSpec, run_pipeline
from mbpo_core.pipeline.stages import PipelineError, RunInputs, RunLayout
from tests.helpers import benchmarks as bh
from tests.helpers import runs as rh


def test_run_file_names_a_benchmark_with_paths_relative_to_it(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    pope = {"benchmark": "pope", "data": "pope/output/coco", "images": "coco/val2014"}
    path.write_text(
        yaml.safe_dump(
            {"out": "out", "model": "m", "pool": "p.jsonl", "eval": {"a": "a.jsonl", "pope": pope}}
        )
    )
    spec = RunSpec.from_yaml(path)
    assert spec.eval == {
        "a": tmp_path / "a.jsonl",
        "pope": BenchmarkEval(
            benchmark="pope", data=tmp_path / "pope/output/coco", images=tmp_path / "coco/val2014"
        ),
    }
    path.write_text(
        yaml.safe_dump(
            {"out": "out", "model": "m", "pool": "p.jsonl", "eval": {"b": {**pope, "benchmark": "pop"}}}
        )
    )
    with pytest.raises(ValidationError, match="unknown benchmark 'pop'"):
        RunSpec.from_yaml(path)


def test_validating_loads_the_benchmark_and_names_a_broken_line(tmp_path: Path) -> None:
    testbed = rh.quick_testbed()
    data, images = bh.write_pope_coco(testbed, tmp_path / "pope", per_split=3)
    online = rh.write_subset(testbed, "online", tmp_path / "online", 4) / "manifest.jsonl"
    inputs = RunInputs(
        model_dir=testbed / "base_model",
        online_manifest=online,
        eval_benchmarks={"pope-coco": BenchmarkSource("pope", data, images)},
    )
    result = pipeline.validate(inputs, RunLayout(tmp_path / "run"), MBPOConfig())
    assert result["datasets"]["eval:pope-coco"] == {"benchmark": "pope", "items": 9}

    bh.break_line(data / "coco_pope_popular.json", 2, "label")
    with pytest.raises(PipelineError) as error:
        pipeline.validate(inputs, RunLayout(tmp_path / "run2"), MBPOConfig())
    assert error.value.code == "invalid_dataset"
    assert f"{data / 'coco_pope_popular.json'}, line 2: missing field 'label'" in error.value.message

    with pytest.raises(PipelineError, match="used twice"):
        RunInputs(
            model_dir=testbed / "base_model",
            eval_manifests={"x": online},
            eval_benchmarks={"x": BenchmarkSource("pope", data, images)},
        )


@pytest.mark.slow
def test_mbpo_run_reports_the_benchmark_tables(tmp_path: Path) -> None:
    testbed = rh.quick_testbed()
    data, images = bh.write_pope_coco(testbed, tmp_path / "pope", per_split=4)
    online = rh.write_subset(testbed, "online", tmp_path / "online", 16) / "manifest.jsonl"
    spec = RunSpec.model_validate(
        {
            "out": str(tmp_path / "run"),
            "model": str(testbed / "base_model"),
            "pool": str(online),
            "online": str(online),
            "eval": {"pope": {"benchmark": "pope", "data": str(data), "images": str(images)}},
            "config": rh.quick_config(max_steps=1),
        }
    )
    report = json.loads(run_pipeline(spec).read_text())
    card = report["benchmarks"]["pope"]
    assert (card["benchmark"], card["items"]) == ("pope", 8)  # eval.limit 8: the first 8 items
    assert card["rows"] == ["coco_pope_adversarial", "coco_pope_popular", "all"]
    answers = tmp_path / "run" / "eval" / "aligned" / "benchmarks" / "pope.answers.jsonl"
    items = BenchmarkSource("pope", data, images).load(limit=8)
    scored = pope.score(items, [json.loads(line)["answer"] for line in answers.read_text().splitlines()])
    assert card["aligned"] == scored and report["base"] == {} and report["significance"] == {}
