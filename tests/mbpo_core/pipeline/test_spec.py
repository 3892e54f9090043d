"""`mbpo run`: the run file and the whole pipeline on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from mbpo_core.pipeline.spec import RunSpec, run_pipeline


def test_run_spec_resolves_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"out": "out", "model": "m", "pool": "p.jsonl", "eval": {"a": "a.jsonl"}}))
    spec = RunSpec.from_yaml(path)
    assert spec.out == tmp_path / "out" and spec.eval == {"a": tmp_path / "a.jsonl"}


def test_run_spec_wants_a_testbed_or_paths(tmp_path):
    with pytest.raises(ValidationError, match="testbed"):
        RunSpec.model_validate({"out": str(tmp_path), "testbed": {"size": "quick"}, "model": "m"})
    with pytest.raises(ValidationError, match="required"):
        RunSpec.model_validate({"out": str(tmp_path), "model": "m"})


def test_pipeline_writes_a_report_on_every_eval_split(tiny_model_dir, tiny_data, tmp_path):
    config = {
        "seed": 0,
        "device": "cpu",
        "attack": {"steps": 2},
        "train": {
            "num_generations": 4,
            "prompts_per_step": 2,
            "max_completion_length": 4,
            "max_steps": 2,
            "save_steps": 2,
            "lora": {"r": 4, "alpha": 8},
        },
        "eval": {"batch_size": 8, "max_new_tokens": 4, "attack_eval": False},
    }
    spec = RunSpec.model_validate(
        {
            "out": str(tmp_path / "run"),
            "model": str(tiny_model_dir),
            "pool": str(tiny_data["online"]),
            "online": str(tiny_data["online"]),
            "eval": {"tiny_a": str(tiny_data["online"]), "tiny_b": str(tiny_data["online"])},
            "config": config,
        }
    )
    report = json.loads(run_pipeline(spec).read_text())
    assert set(report["base"]) == set(report["aligned"]) == set(report["delta"]) == {"tiny_a", "tiny_b"}
    # Every change carries its paired interval; the point estimate is the plain delta.
    card = report["significance"]["tiny_a"]
    assert card["n"] == report["base"]["tiny_a"]["n"]
    accuracy = card["intervals"]["accuracy"]
    assert accuracy["delta"] == pytest.approx(report["delta"]["tiny_a"]["accuracy"])
    assert accuracy["low"] <= accuracy["delta"] <= accuracy["high"]
    assert accuracy["significant"] == (accuracy["low"] > 0 or accuracy["high"] < 0)
    assert set(card["mcnemar"]) == {"base_only", "aligned_only", "p_value"}
    assert report["training"]["steps"] == 2
    assert "attack_success_rate" in report["mining"]
    assert (tmp_path / "run" / "training" / "model" / "config.json").is_file()
    # A second run of the same spec finds every stage finished and rewrites the same report.
    again = json.loads(run_pipeline(spec).read_text())
    assert again["aligned"] == report["aligned"]
    assert again["significance"] == report["significance"]
