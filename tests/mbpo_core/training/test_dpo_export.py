"""Mined pairs exported as a TRL preference dataset train TRL's own DPOTrainer (one step, tiny VLM)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from datasets import load_dataset
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration
from trl import DPOConfig, DPOTrainer

from mbpo_core.data.formats import pairs_to_preference_parquet
from mbpo_core.models.processors import Qwen2VLProcessor
from tests.mbpo_core.training.conftest import COLOURS


def test_exported_pairs_train_trl_dpo_for_one_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    pairs = []
    for i in range(4):
        colour = "red" if i % 2 else "blue"
        Image.new("RGB", (28, 28), COLOURS[colour]).save(tmp_path / "images" / f"{i}.png")
        Image.new("RGB", (28, 28), (0, 0, 0)).save(tmp_path / "images" / f"{i}-adv.png")
        pairs.append(
            {
                "id": f"p{i}",
                "image": f"images/{i}.png",
                "perturbed_image": f"images/{i}-adv.png",
                "question": f"is there a {colour} circle ?",
                "task": "yes_no",
                "chosen": "yes",
                "rejected": "no",
            }
        )
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    assert pairs_to_preference_parquet(tmp_path / "pairs.jsonl", tmp_path / "pairs.parquet") == 4
    dataset = load_dataset(
        "parquet",
        data_files=str(tmp_path / "pairs.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    processor = Qwen2VLProcessor.from_pretrained(str(tiny_model_dir), local_files_only=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()

    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert torch.isfinite(torch.tensor(logged["loss"]))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
