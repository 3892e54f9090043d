"""Seconds per optimiser step: hybrid GRPO vs plain TRL GRPOTrainer, same model, batch and G.

    .venv/bin/python bench/train_step.py --size small --steps 30 --out bench/train_step.json

Three trainers on the same randomly initialised model (a random model never emits end-of-sequence, so
every answer has exactly `max_completion_length` tokens and the work per answer is identical):

    plain    TRL's GRPOTrainer, online prompts only
    hybrid   HybridGRPOTrainer with offline_fraction=0 (the overhead of the subclass; goal <= 1.10x)
    offline  HybridGRPOTrainer with offline_fraction=0.5: every offline group samples G-2 answers
             instead of G (should be faster than plain)

The three trainers are built once and then stepped in turn (plain, hybrid, offline, plain, ...), each
step a full TRL `training_step` (generate, score, forward, backward) plus the optimiser step on a
fixed batch, so a busy shared CPU slows all three alike. Both this process's CPU time (one torch
thread: the work, insensitive to neighbours) and wall time are reported, median and quartiles after
`--warmup` steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from trl import GRPOTrainer

from mbpo_core.config import LoraConfig, TrainConfig
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.training.arguments import grpo_config, peft_config
from mbpo_core.training.data import PromptRow, build_prompt_dataset
from mbpo_core.training.rewards import TRL_REWARD_FUNCS
from mbpo_core.training.trainer import HybridGRPOTrainer

WORDS = ["is", "there", "a", "red", "blue", "green", "circle", "square", "yes", "no"]


def make_rows(root: Path, image_size: int, n: int) -> tuple[list[PromptRow], list[PromptRow]]:
    online, offline = [], []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("RGB", (image_size, image_size), (40 * (i % 6), 90, 200)).save(path)
        online.append(PromptRow(f"o{i}", path, "is there a red circle ?", "yes_no", "yes"))
        offline.append(
            PromptRow(f"p{i}", path, "is there a blue square ?", "yes_no", "no", chosen="no", rejected="yes")
        )
    return online, offline


def build_trainer(kind: str, model_dir: Path, rows: tuple[list, list], train: TrainConfig, out: Path) -> Any:
    from mbpo_core.models.loader import load_adapter

    adapter = load_adapter(model_dir)
    adapter.processor.tokenizer.padding_side = "left"
    args = grpo_config(train, output_dir=out, seed=0, use_cpu=not torch.cuda.is_available(), bf16=False)
    online, offline = rows
    common = {"model": adapter.model, "args": args, "processing_class": adapter.processor}
    common["peft_config"] = peft_config(train.lora)
    if kind == "plain":
        trainer: Any = GRPOTrainer(
            reward_funcs=list(TRL_REWARD_FUNCS),  # type: ignore[arg-type]
            train_dataset=build_prompt_dataset(online, []),
            **common,
        )
    else:
        offline_groups = 0 if kind == "hybrid" else train.prompts_per_step // 2
        dataset = build_prompt_dataset(online, offline if offline_groups else [])
        trainer = HybridGRPOTrainer(train_dataset=dataset, offline_groups_per_step=offline_groups, **common)
    trainer.model.train()
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def step_batch(trainer: Any, kind: str, groups: int, group_size: int) -> list[dict[str, Any]]:
    """The step's rows: `groups` prompts, each repeated G times; half offline for `offline`."""
    dataset = trainer.train_dataset
    n_online = sum(c is None for c in dataset["mined_chosen"])
    offline = groups // 2 if kind == "offline" else 0
    prompts = [n_online + i for i in range(offline)] + list(range(groups - offline))
    return [dataset[i] for i in prompts for _ in range(group_size)]


def timed_step(trainer: Any, batch: list[dict[str, Any]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.training_step(trainer.model, copy.deepcopy(batch), None)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - wall, time.process_time() - cpu


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """Median and quartiles per trainer, and the medians' ratios to plain TRL."""
    median = {kind: statistics.median(values) for kind, values in times.items()}
    return {
        "median": median,
        "quartiles": {kind: [round(q, 4) for q in statistics.quantiles(v, n=4)] for kind, v in times.items()},
        "ratio_hybrid_over_plain": median["hybrid"] / median["plain"],
        "ratio_offline_over_plain": median["offline"] / median["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--size", default="small")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--groups", type=int, default=4, help="prompts per optimiser step")
    parser.add_argument("--generations", type=int, default=4, help="G, answers per prompt")
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    train = TrainConfig(
        num_generations=opts.generations,
        prompts_per_step=opts.groups,
        max_completion_length=opts.completion_length,
        max_steps=opts.warmup + opts.steps,
        save_steps=opts.warmup + opts.steps,
        lora=LoraConfig(r=8, alpha=16),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        processor = build_processor(opts.family, WORDS, image_size=opts.image_size)
        model = build_model(opts.family, processor, size=opts.size, seed=0)
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")
        (root / "images").mkdir()
        rows = make_rows(root / "images", opts.image_size, 16)
        kinds = ("plain", "hybrid", "offline")
        trainers = {kind: build_trainer(kind, root / "model", rows, train, root / kind) for kind in kinds}
        batches = {kind: step_batch(trainers[kind], kind, opts.groups, opts.generations) for kind in kinds}
        wall: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        for step in range(opts.warmup + opts.steps):
            for kind in kinds[step % 3 :] + kinds[: step % 3]:  # rotate: nobody always goes first
                seconds = timed_step(trainers[kind], batches[kind])
                if step >= opts.warmup:
                    wall[kind].append(seconds[0])
                    cpu[kind].append(seconds[1])
    result = {
        "config": vars(opts) | {"out": str(opts.out) if opts.out else None},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": opts.threads},
        "steps_measured_per_trainer": len(wall["plain"]),
        "cpu_seconds_per_step": summarize(cpu),
        "wall_seconds_per_step": summarize(wall),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
