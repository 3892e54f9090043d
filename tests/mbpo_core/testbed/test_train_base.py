"""Base-model training mechanics on a handful of images: determinism, stuck-run restarts, saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mbpo_core.models.build import build_processor
from mbpo_core.testbed.questions import vocabulary
from mbpo_core.testbed.splits import build_sft
from mbpo_core.testbed.train_base import (
    KIND_INDEX,
    BaseTrainConfig,
    StuckRunError,
    TrainingRun,
    answer_losses,
    cell_presence_targets,
    extend_base_model,
    train_base_model,
)
from mbpo_core.testbed.world import WorldSpec
from mbpo_core.testbed.writer import write_split

TINY = {
    "hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "ffn": 32, "v_dim": 32, "v_depth": 1, "v_heads": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def sft_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = WorldSpec(image_size=56)
    return write_split(tmp_path_factory.mktemp("sft") / "sft", build_sft(0, world, 12))


def config(**overrides: object) -> BaseTrainConfig:
    values: dict = {"size": TINY, "steps": 3, "images_per_batch": 4, "warmup_steps": 1, "num_threads": 1}
    return BaseTrainConfig(**{**values, **overrides})


def test_training_is_deterministic_given_the_seed(sft_manifest: Path) -> None:
    processor = build_processor("qwen2_vl", vocabulary(), image_size=56)
    first, report = train_base_model(sft_manifest, processor, config(seed=3))
    second, _ = train_base_model(sft_manifest, processor, config(seed=3))
    other, _ = train_base_model(sft_manifest, processor, config(seed=4))
    assert report.attempts == 1 and report.steps == 3 and report.history
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))


def test_stuck_runs_restart_then_fail_loudly(sft_manifest: Path) -> None:
    processor = build_processor("qwen2_vl", vocabulary(), image_size=56)
    restarts: list[str] = []
    # A negative threshold: every attempt counts as stuck at the check step.
    cfg = config(stuck_check_step=2, stuck_loss=-1.0, max_attempts=3)
    with pytest.raises(StuckRunError):
        train_base_model(sft_manifest, processor, cfg, on_restart=restarts.append)
    assert len(restarts) == 3 and all("step 2" in r for r in restarts)


def test_retraining_continues_the_attempt_numbering_and_the_report(sft_manifest: Path) -> None:
    processor = build_processor("qwen2_vl", vocabulary(), image_size=56)
    _, report = train_base_model(sft_manifest, processor, config(seed=3, max_attempts=3))
    second, report = train_base_model(
        sft_manifest, processor, config(seed=3, max_attempts=3), first_attempt=1, report=report
    )
    # Attempt 1 of seed 3 is the same run as a fresh build's attempt 1 (seed derived, not drawn).
    alone, _ = train_base_model(sft_manifest, processor, config(seed=3, max_attempts=3), first_attempt=1)
    assert report.attempts == 2
    assert [(h["attempt"], h["step"]) for h in report.history] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    for (name, a), (_, b) in zip(second.state_dict().items(), alone.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError):
        train_base_model(sft_manifest, processor, config(max_attempts=2), first_attempt=2)


def test_extending_a_run_continues_it_deterministically(sft_manifest: Path) -> None:
    processor = build_processor("qwen2_vl", vocabulary(), image_size=56)
    models = []
    for _ in range(2):
        runs: list[TrainingRun] = []
        cfg = config(seed=5, extend_steps=2)
        _, report = train_base_model(sft_manifest, processor, cfg, on_finished=runs.append)
        before = {k: v.clone() for k, v in runs[0].model.state_dict().items()}
        models.append(extend_base_model(runs[0], cfg, report))
        assert report.steps == 5 and runs[0].step == 5 and report.attempts == 1
        assert [h["step"] for h in report.history] == [0, 2, 4]
        assert any(not torch.equal(before[k], v) for k, v in models[-1].state_dict().items())
        assert not models[-1].training
    for (name, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_answer_losses_score_only_answer_tokens() -> None:
    logits = torch.zeros(2, 4, 5)
    logits[0, 1, 3] = 10.0  # position 1 predicts token 3 (the first answer token of row 0) confidently
    labels = torch.tensor([[-100, -100, 3, 4], [-100, -100, -100, 2]])
    mean, first = answer_losses(logits, labels)
    uniform = torch.log(torch.tensor(5.0))
    assert first[0] < 1e-3 and torch.isclose(first[1], uniform)
    assert torch.isclose(mean, (first[0] + 2 * uniform) / 3)


def test_cell_presence_targets_mark_the_cells_an_object_touches() -> None:
    layout = [{"object": "red circle", "x": 42.0, "y": 14.0, "r": 5.0}]  # inside cell (row 0, col 1)
    big = [{"object": "blue square", "x": 56.0, "y": 56.0, "r": 10.0}]  # on the corner of 4 cells
    targets = cell_presence_targets([layout, big], image_size=112, cell=28)
    red, blue = KIND_INDEX["red circle"], KIND_INDEX["blue square"]
    assert targets.shape == (2, 16, len(KIND_INDEX))
    assert targets[0, :, red].nonzero().flatten().tolist() == [1]
    assert targets[1, :, blue].nonzero().flatten().tolist() == [5, 6, 9, 10]
    assert targets.sum() == 5
