"""`mbpo train` end to end on the tiny model."""

from __future__ import annotations

import json

import typer
import yaml
from typer.testing import CliRunner

from mbpo_cli import train as train_cli
from mbpo_core.models.loader import load_adapter
from tests.mbpo_core.training.conftest import tiny_config


def test_mbpo_train_writes_a_loadable_model(tiny_model_dir, tiny_data, tmp_path):
    app = typer.Typer()
    train_cli.register(app)
    config_path = tmp_path / "config.yaml"
    config = tiny_config(offline_fraction=0.5, max_steps=2, save_steps=1)
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    args = ["train", "--model", str(tiny_model_dir), "--pairs", str(tiny_data["pairs"])]
    args += [
        "--online",
        str(tiny_data["online"]),
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(config_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.rindex('{\n  "steps"') :])
    assert summary["steps"] == 2 and not summary["cancelled"]
    load_adapter(summary["model"])  # the aligned model loads like any base model
    again = CliRunner().invoke(app, [*args, "--resume"])  # already finished: resumes to the end, no-op
    assert again.exit_code == 0, again.output


def test_mbpo_train_needs_some_data(tiny_model_dir, tmp_path):
    app = typer.Typer()
    train_cli.register(app)
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    assert result.exit_code != 0
