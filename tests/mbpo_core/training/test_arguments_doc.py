"""The mapping table of docs/training.md (MBPO field -> TRL name) is what `grpo_config` does: every
one-to-one row is checked by setting the field to a distinctive value."""

from __future__ import annotations

import re
from pathlib import Path

from mbpo_core.config import MBPOConfig
from mbpo_core.training.arguments import grpo_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "training.md"
ONE_TO_ONE = re.compile(r"^\| `(seed|train\.[a-z_]+)` \| `([a-z_]+)` \|$", re.MULTILINE)

# A value for each field that no default shares, so a row pointing at the wrong TRL name fails.
VALUES = {
    "seed": 1234,
    "train.num_generations": 6,
    "train.max_steps": 77,
    "train.learning_rate": 3.5e-6,
    "train.lr_scheduler": "cosine",
    "train.warmup_steps": 7,
    "train.temperature": 0.7,
    "train.max_completion_length": 33,
    "train.beta": 0.123,
    "train.epsilon": 0.31,
    "train.loss_type": "dr_grpo",
    "train.gradient_accumulation_steps": 3,
    "train.save_steps": 11,
    "train.keep_checkpoints": 5,
}


def test_every_one_to_one_row_of_the_table_holds(tmp_path: Path) -> None:
    rows = ONE_TO_ONE.findall(DOC.read_text())
    assert len(rows) >= 12, rows
    for field, trl_name in rows:
        assert field in VALUES, f"add a test value for {field}"
        value = VALUES[field]
        section, _, name = field.rpartition(".")
        data: dict[str, object] = {"train": {"prompts_per_step": 6}}
        if section:
            data["train"] = {**data["train"], name: value}  # type: ignore[dict-item]
        else:
            data[name] = value
        config = MBPOConfig.model_validate(data)
        args = grpo_config(config.train, output_dir=tmp_path, seed=config.seed, use_cpu=True, bf16=False)
        got = getattr(args, trl_name)
        got = getattr(got, "value", got)  # enums (lr_scheduler_type)
        assert got == value, (field, trl_name, got, value)
