"""A tiny random Qwen2-VL model and a tiny dataset (manifest + mined pairs) on disk, for trainer tests.

A random model never says yes/no, so the trainer tests that need rewards to vary use a reward on the
answer's length instead (`length_reward`); learning on the real task is the testbed's job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mbpo_core.config import LoraConfig, MBPOConfig, TrainConfig
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.training.rewards import completion_text

WORDS = ["is", "there", "a", "red", "blue", "circle", "square", "yes", "no", "what", "colour", "the"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_qwen2_vl")
    processor = build_processor("qwen2_vl", WORDS, image_size=28)
    model = build_model("qwen2_vl", processor, size="tiny", seed=0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """`online.jsonl` (6 yes/no samples) and `pairs.jsonl` (4 mined pairs) with their images."""
    root = tmp_path_factory.mktemp("tiny_data")
    (root / "images").mkdir(exist_ok=True)
    online, pairs = [], []
    for i in range(6):
        colour = "red" if i % 2 else "blue"
        Image.new("RGB", (28, 28), COLOURS[colour]).save(root / "images" / f"s{i}.png")
        online.append(
            {
                "id": f"s{i}",
                "image": f"images/s{i}.png",
                "question": f"is there a {colour} circle ?",
                "answer": "yes",
                "task": "yes_no",
            }
        )
    for i in range(4):
        pairs.append(
            {
                "id": f"p{i}",
                "image": f"images/s{i}.png",
                "perturbed_image": f"images/s{i}.png",
                "question": "is there a red square ?",
                "task": "yes_no",
                "chosen": "no" if i % 2 == 0 else "yes",
                "rejected": "yes" if i % 2 == 0 else "no",
                "iig": 0.1,
                "logp_clean": -1.0,
                "logp_adv": -3.0,
                "prior_agreement": True,
            }
        )
    (root / "online.jsonl").write_text("".join(json.dumps(r) + "\n" for r in online))
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return {"online": root / "online.jsonl", "pairs": root / "pairs.jsonl"}


def length_reward(prompts, completions, **_):
    """Varies even for a random model: the number of characters of the answer."""
    return [float(len(completion_text(c))) for c in completions]


def tiny_config(**train: object) -> MBPOConfig:
    lora = train.pop("lora", LoraConfig(r=4, alpha=8))
    settings: dict[str, object] = {
        "num_generations": 4,
        "prompts_per_step": 2,
        "max_completion_length": 4,
        "max_steps": 2,
        "save_steps": 2,
        "learning_rate": 1e-3,
        "lora": lora,
        **train,
    }
    return MBPOConfig(seed=0, device="cpu", train=TrainConfig.model_validate(settings))
