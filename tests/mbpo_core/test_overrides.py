"""Dotted `--set` overrides of a run's configuration (mbpo_core.config.apply_overrides), as the CLI
takes them: typed values, nested keys, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.config import MBPOConfig, OverrideError, apply_overrides, parse_value
from mbpo_core.pipeline.spec import RunSpec


def test_values_are_json_then_yaml_then_text() -> None:
    assert parse_value("1e-5") == 1e-5  # YAML 1.1 would keep this a string
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[a, b]") == ["a", "b"] and parse_value('["a"]') == ["a"]
    assert parse_value("on_policy") == "on_policy"


def test_overrides_set_nested_keys_on_a_copy() -> None:
    data = {"train": {"max_steps": 10}}
    out = apply_overrides(data, ["train.learning_rate=1e-5", "train.lora.enabled=false", "eval.limit=null"])
    assert data == {"train": {"max_steps": 10}}
    config = MBPOConfig.model_validate(out)
    assert config.train.learning_rate == 1e-5 and config.train.max_steps == 10
    assert config.train.lora.enabled is False and config.eval.limit is None


@pytest.mark.parametrize(
    ("assignment", "message"),
    [("train.max_steps", "dotted.key=value"), ("train..x=1", "dotted.key=value"), ("seed.x=1", "is a value")],
)
def test_malformed_assignments_are_refused(assignment: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        apply_overrides({"seed": 0}, [assignment])


def test_the_model_names_a_mistyped_or_out_of_range_field() -> None:
    with pytest.raises(ValidationError, match=r"train\.lernin_rate"):
        MBPOConfig.model_validate(apply_overrides({}, ["train.lernin_rate=1"]))
    with pytest.raises(ValidationError, match=r"train\.max_steps"):
        MBPOConfig.model_validate(apply_overrides({}, ["train.max_steps=0"]))


def test_run_specs_take_config_keys_without_their_prefix(tmp_path: Path) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text("out: out\ntestbed: {size: quick}\nconfig: {train: {max_steps: 5}}\n")
    spec = RunSpec.from_yaml(spec_file, ["train.max_steps=7", "config.seed=3", "out=elsewhere"])
    assert spec.config.train.max_steps == 7 and spec.config.seed == 3
    assert spec.out == Path("elsewhere")  # a command-line path is relative to the working directory


def test_the_cli_refuses_a_bad_override_naming_the_field(tmp_path: Path) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text("out: out\ntestbed: {size: quick}\n")
    result = CliRunner().invoke(app, ["run", "--config", str(spec_file), "--set", "train.lernin_rate=3"])
    assert result.exit_code == 2
    assert "config.train.lernin_rate" in result.output
