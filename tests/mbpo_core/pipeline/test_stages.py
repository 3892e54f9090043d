"""The stage functions a run executes (mbpo_core.pipeline.stages), without the service: input problems
are PipelineErrors with stable codes, a stop request interrupts mining at a batch boundary and a
re-run continues from what it left, and a finished stage is not computed again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mbpo_core.config import MBPOConfig
from mbpo_core.pipeline import stages as pipeline
from mbpo_core.pipeline.stages import PipelineError, RunInputs, RunLayout, StageCancelled, StageProgress
from tests.helpers import disk
from tests.helpers import runs as rh


@pytest.fixture(scope="module")
def testbed() -> Path:
    return rh.quick_testbed()


@pytest.fixture(scope="module")
def small(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> RunInputs:
    root = tmp_path_factory.mktemp("pipeline-data")
    return RunInputs(
        model_dir=testbed / "base_model",
        offline_manifest=rh.write_subset(testbed, "offline", root / "offline", 24) / "manifest.jsonl",
        online_manifest=rh.write_subset(testbed, "online", root / "online", 8) / "manifest.jsonl",
    )


def test_validate_names_the_problem(small: RunInputs, tmp_path: Path) -> None:
    config = MBPOConfig()
    layout = RunLayout(tmp_path / "run")
    result = pipeline.validate(small, layout, config)
    assert small.offline_manifest is not None
    n_offline = len(small.offline_manifest.read_text().splitlines())
    assert result["model"]["family"] == "qwen2_vl" and result["datasets"]["offline"]["samples"] == n_offline
    cases = {
        "invalid_model": RunInputs(model_dir=tmp_path, online_manifest=small.online_manifest),
        "no_training_data": RunInputs(model_dir=small.model_dir),
        "invalid_dataset": RunInputs(model_dir=small.model_dir, online_manifest=tmp_path / "missing.jsonl"),
    }
    open_only = tmp_path / "open"
    open_only.mkdir()
    assert small.online_manifest is not None
    shutil.copytree(small.online_manifest.parent / "images", open_only / "images")
    lines = [json.loads(line) for line in small.online_manifest.read_text().splitlines()]
    (open_only / "manifest.jsonl").write_text(
        "".join(
            json.dumps({k: v for k, v in row.items() if k != "choices"} | {"task": "open"}) + "\n"
            for row in lines
        )
    )
    for code, inputs in cases.items():
        with pytest.raises(PipelineError) as error:
            pipeline.validate(inputs, layout, config)
        assert error.value.code == code
    with pytest.raises(PipelineError) as error:
        pipeline.validate(
            RunInputs(model_dir=small.model_dir, online_manifest=open_only / "manifest.jsonl"), layout, config
        )
    assert error.value.code == "invalid_dataset" and "close-ended" in error.value.message


def test_mining_stops_at_a_batch_and_resumes(small: RunInputs, tmp_path: Path) -> None:
    config = MBPOConfig.model_validate(
        {
            **rh.QUICK_RUN_CONFIG,
            "iig": {"keep_fraction": 1.0},
            "attack": {"steps": 2, "batch_size": 2},
            "mining": {"limit": 4, "max_new_tokens": 4},
        }
    )
    layout = RunLayout(tmp_path / "run")
    scored = pipeline.score(small, layout, config)
    assert small.offline_manifest is not None
    assert (
        scored["n_scored"] == len(small.offline_manifest.read_text().splitlines())
        and scored["n_selected"] == 4
    )
    assert pipeline.score(small, layout, config) == scored  # finished: read back, not recomputed

    seen: list[StageProgress] = []
    with pytest.raises(StageCancelled):
        pipeline.mine(small, layout, config, seen.append, lambda: bool(seen))
    records = (layout.mining_dir / "records.jsonl").read_text().splitlines()
    assert 1 <= len(records) < 4 and not layout.stage_file("mining").exists()

    progress: list[StageProgress] = []
    summary = pipeline.mine(small, layout, config, progress.append, lambda: False)
    assert summary["n_selected"] == 4 and layout.stage_file("mining").is_file()
    ids = [json.loads(line)["id"] for line in (layout.mining_dir / "records.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4  # the first attempt's samples were not mined again
    assert progress[0].done > len(records) - 1 and progress[-1].fraction == 1.0


def _online_only(small: RunInputs) -> RunInputs:
    return RunInputs(model_dir=small.model_dir, online_manifest=small.online_manifest)


def test_training_stopped_before_its_first_step_returns_at_once(small: RunInputs, tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    config = MBPOConfig.model_validate(rh.quick_config(max_steps=50))
    with pytest.raises(StageCancelled):
        pipeline.train(_online_only(small), layout, config, should_stop=lambda: True)
    assert pipeline.checkpoint_steps(layout) == [] and not layout.stage_file("training").exists()


def test_a_fenced_run_directory_gets_no_checkpoint(small: RunInputs, tmp_path: Path) -> None:
    """A worker that lost the run's lease (`may_write` says no) publishes nothing: the staged
    checkpoint is removed instead of renamed into place, and the stage ends."""
    asked: list[int] = []

    def may_write() -> bool:
        asked.append(1)
        return False

    layout = RunLayout(tmp_path / "run", may_write=may_write)
    config = MBPOConfig.model_validate(rh.quick_config(max_steps=3, save_steps=1))
    with pytest.raises(StageCancelled, match="no longer owns the run"):
        pipeline.train(_online_only(small), layout, config)
    assert asked, "the fence was never asked"
    assert pipeline.checkpoint_steps(layout) == []
    assert not list(layout.checkpoints_dir.glob(".staging-*"))
    assert not layout.final_model_dir.exists() and not layout.stage_file("training").exists()
    with pytest.raises(StageCancelled):
        layout.write_json(layout.stage_file("validating"), {"x": 1})
    assert not layout.stage_file("validating").exists()


def test_a_full_disk_is_recognised_by_what_the_writers_raise(tmp_path: Path) -> None:
    """What plain writes, safetensors and torch.save raise on a real full filesystem."""
    import torch
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(1 << 20)}  # 4 MiB
    writers = {
        "plain": lambda p: p.write_bytes(b"x" * (4 << 20)),
        "safetensors": lambda p: save_file(tensors, str(p)),
        "torch": lambda p: torch.save(tensors, p),
    }
    with disk.small_filesystem(tmp_path / "fs", size_mib=2) as fs:
        for name, write in writers.items():
            with pytest.raises(Exception) as failed:
                write(fs / name)
            assert pipeline.is_disk_full(failed.value, fs), (name, failed.value)
            (fs / name).unlink(missing_ok=True)
    # With space left, an error that does not name the disk is not a full disk.
    assert not pipeline.is_disk_full(RuntimeError("unexpected pos 704 vs 598"), tmp_path)
    assert not pipeline.is_disk_full(ValueError("a bug"), tmp_path)
