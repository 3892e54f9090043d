"""The quick testbed end to end: built once per session (cached), reloaded like a downloaded model.

The build itself already failed loudly if the model did not beat chance; these tests check what
later issues rely on: the files, the plain Hugging Face model, and `mbpo eval` on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from safetensors import safe_open
from typer.testing import CliRunner

from mbpo_cli import testbed as testbed_cli
from mbpo_core.data.manifest import read_manifest
from mbpo_core.evaluation.evaluate import evaluate_manifest
from mbpo_core.models.loader import load_adapter
from mbpo_core.testbed.build import manifest_path
from mbpo_core.testbed.splits import SPLITS

pytestmark = pytest.mark.slow


def test_every_split_is_on_disk(quick_testbed: Path) -> None:
    for split in SPLITS:
        samples = read_manifest(manifest_path(quick_testbed, split))
        assert samples, split
        assert all((manifest_path(quick_testbed, split).parent / s.image).is_file() for s in samples[:20])


def test_base_model_is_a_plain_qwen2_vl_without_the_aux_head(quick_testbed: Path) -> None:
    model_dir = quick_testbed / "base_model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    weights = sorted(model_dir.glob("*.safetensors"))
    assert weights and not list(model_dir.glob("*.bin"))
    for file in weights:
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
            assert names and not [k for k in names if "presence" in k or k.startswith("head.")]


def test_reloaded_model_beats_chance_on_pope_random(quick_testbed: Path) -> None:
    torch.set_num_threads(2)
    adapter = load_adapter(quick_testbed / "base_model")
    evaluation = evaluate_manifest(adapter, manifest_path(quick_testbed, "pope_random"))
    report = json.loads((quick_testbed / "build_report.json").read_text())
    assert evaluation.metrics["accuracy"] > 0.6
    # Reloading reproduces the build's own numbers: the saved model is the trained one.
    assert evaluation.metrics["accuracy"] == pytest.approx(report["metrics"]["pope_random"]["accuracy"])
    assert report["train"]["attempts"] >= 1 and report["failures"] == []


def test_eval_cli_writes_the_documented_json(quick_testbed: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    testbed_cli.register(app)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(quick_testbed / "base_model"), "--limit", "20", "--out", str(out)]
    for split in ("pope_adversarial", "vqa"):
        args += ["--data", str(manifest_path(quick_testbed, split))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["model"] == str(quick_testbed / "base_model")
    pope, vqa = written["splits"]["pope_adversarial"], written["splits"]["vqa"]
    assert pope["n"] == 20
    assert {"n", "accuracy", "precision", "recall", "f1", "yes_ratio", "iig_mean"} <= set(pope)
    assert {"n", "accuracy", "iig_mean"} <= set(vqa) and "precision" not in vqa
    assert "pope_adversarial" in result.output  # the printed table
