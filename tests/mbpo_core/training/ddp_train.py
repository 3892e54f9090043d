"""Entry point for the multi-process test: `accelerate launch ... ddp_train.py MODEL ONLINE PAIRS OUT`.

Sampling is made deterministic (top-k = 1) so one process and two processes draw the same answers
and their losses can be compared exactly; everything else is the normal training path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from mbpo_core.config import LoraConfig, MBPOConfig, TrainConfig
from mbpo_core.training import session
from mbpo_core.training.session import train_policy


def _greedy_grpo_config(*args, **kwargs):
    config = _grpo_config(*args, **kwargs)
    config.top_k = 1
    return config


_grpo_config = session.grpo_config
session.grpo_config = _greedy_grpo_config


def main() -> None:
    model, online, pairs, out = (Path(a) for a in sys.argv[1:5])
    torch.set_num_threads(1)
    train = TrainConfig(
        num_generations=4,
        prompts_per_step=4,
        max_completion_length=4,
        max_steps=3,
        save_steps=3,
        learning_rate=1e-2,
        offline_fraction=0.5,
        lora=LoraConfig(r=4, alpha=8),
    )
    result = train_policy(
        model, out, MBPOConfig(seed=0, device="cpu", train=train), online=online, pairs=pairs
    )
    if result.model_dir is not None:  # the main process
        losses = {e["step"]: e["loss"] for e in result.log_history if "loss" in e}
        processes = PartialState().num_processes
        backend = PartialState().backend
        (out / "losses.json").write_text(
            json.dumps({"processes": processes, "backend": backend, "losses": losses})
        )


if __name__ == "__main__":
    main()
