"""Training under `accelerate launch --num_processes 2` (CPU, gloo) gives the single-process losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _launch(processes: int, tiny_model_dir: Path, tiny_data: dict[str, Path], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    accelerate += ["--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
    # accelerate's multi-process launcher is named multi_gpu; without CUDA it sets up gloo on the CPU.
    accelerate += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    args = [str(SCRIPT), str(tiny_model_dir), str(tiny_data["online"]), str(tiny_data["pairs"]), str(out)]
    done = subprocess.run([*accelerate, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "losses.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tiny_data, tmp_path):
    one = _launch(1, tiny_model_dir, tiny_data, tmp_path / "one")
    two = _launch(2, tiny_model_dir, tiny_data, tmp_path / "two")
    assert (one["processes"], two["processes"], two["backend"]) == (1, 2, "gloo")
    single, double = one["losses"], two["losses"]
    assert single.keys() == double.keys() == {"1", "2", "3"}
    assert any(abs(v) > 1e-3 for v in single.values())
    for step, loss in single.items():
        assert double[step] == pytest.approx(loss, abs=1e-5), step
