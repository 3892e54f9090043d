"""Checkpoints: exact resume after an interruption, atomic layout, bounded rotation by default, and
loadable merged models."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from mbpo_core.config import MBPOConfig
from mbpo_core.models.loader import load_adapter
from mbpo_core.training import checkpoint
from mbpo_core.training.arguments import grpo_config, peft_config
from mbpo_core.training.session import train_policy

from .conftest import tiny_config


def _losses(result) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result.log_history if "loss" in entry}


def _stop_after(steps: int):
    """Yes after `steps` training steps: train_policy asks once before the first step, then after
    every step."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > steps

    return should_stop


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_interrupted_run_resumes_to_the_same_losses(tiny_model_dir, tiny_data, tmp_path, lora):
    settings = {"offline_fraction": 0.5, "max_steps": 4, "save_steps": 2}
    if not lora:
        settings["lora"] = {"enabled": False}
    config = tiny_config(**settings)
    data = {"online": tiny_data["online"], "pairs": tiny_data["pairs"]}

    straight = train_policy(tiny_model_dir, tmp_path / "straight", config, **data)
    stopped = train_policy(tiny_model_dir, tmp_path / "resumed", config, should_stop=_stop_after(1), **data)
    assert stopped.cancelled and stopped.steps == 1 and stopped.model_dir is None
    assert checkpoint.checkpoint_steps(tmp_path / "resumed" / "checkpoints") == [1]
    resumed = train_policy(tiny_model_dir, tmp_path / "resumed", config, resume=True, **data)

    assert resumed.steps == straight.steps == 4 and not resumed.cancelled
    expected, got = _losses(straight), _losses(resumed)
    assert sorted(got) == [1, 2, 3, 4] and any(abs(v) > 1e-3 for v in expected.values())
    for step in range(1, 5):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    run_dir = tmp_path / "resumed" / "checkpoints"
    assert checkpoint.checkpoint_steps(run_dir) == [1, 2, 4]
    assert not list(run_dir.glob(".staging-*")) and not list(run_dir.rglob("training_args.bin"))


def test_by_default_the_newest_three_complete_checkpoints_are_kept(tmp_path):
    """A long run no longer fills the disk: the default keeps 3 (null, explicitly, keeps all), and
    rotation removes old checkpoints only after the new one is in place, so the newest complete
    checkpoint (what resume reads) always exists."""
    train = MBPOConfig.model_validate({}).train
    assert train.keep_checkpoints == 3
    assert MBPOConfig.model_validate({"train": {"keep_checkpoints": None}}).train.keep_checkpoints is None
    args = grpo_config(train, output_dir=tmp_path / "args", seed=0, use_cpu=True, bf16=False)
    assert args.save_total_limit == 3  # what the trainer hands to checkpoint.publish as `keep`

    def write_model(target):
        target.mkdir()
        (target / "config.json").write_text("{}")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for step in range(1, 7):
        staged = checkpoint.staging_dir(run_dir, step) / f"checkpoint-{step}"
        staged.mkdir(parents=True)
        (staged / "trainer_state.json").write_text("{}")
        checkpoint.publish(staged, run_dir, step, write_model=write_model, keep=args.save_total_limit)
        assert checkpoint.latest_checkpoint(run_dir) == run_dir / f"checkpoint-{step}"
        assert (run_dir / f"checkpoint-{step}" / "model" / "config.json").exists()
    assert checkpoint.checkpoint_steps(run_dir) == [4, 5, 6]
    assert not list(run_dir.glob(".staging-*"))


def test_resume_refuses_checkpoints_outside_the_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="outside"):
        checkpoint.require_inside(tmp_path / "elsewhere", tmp_path / "run")


def _logits(model, processor, image):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a red circle ?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_lora_checkpoint_loads_as_a_merged_base_model(tiny_model_dir, tiny_data, tmp_path):
    from PIL import Image

    adapter = load_adapter(tiny_model_dir)
    torch.manual_seed(0)
    model = get_peft_model(adapter.model, peft_config(tiny_config().train.lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # a trained adapter, not the zero init
    image = Image.open(tiny_data["online"].parent / "images" / "s0.png").convert("RGB")
    expected = _logits(model, adapter.processor, image)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    checkpoint.write_loadable_model(model, adapter.processor, tmp_path / "model")

    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the training model is untouched
    loaded = load_adapter(tmp_path / "model")
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())
    torch.testing.assert_close(_logits(loaded.model, loaded.processor, image), expected, rtol=1e-5, atol=1e-5)
