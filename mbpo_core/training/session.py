"""`train_policy`: one hybrid GRPO training run from directories to a loadable aligned model.

This is what the CLI (`mbpo train`), the pipeline (`mbpo run`) and the worker call. It also runs
unchanged under `accelerate launch` (DDP on GPUs, gloo on CPU): every process calls it with the
same arguments and TRL splits each step's groups over the processes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import PrinterCallback

from mbpo_core.config import MBPOConfig
from mbpo_core.models.base import VISION_ENCODERS
from mbpo_core.models.device import resolve_device, resolve_dtype
from mbpo_core.models.loader import load_adapter
from mbpo_core.training import checkpoint
from mbpo_core.training.arguments import grpo_config, peft_config, tensorboard_callback
from mbpo_core.training.data import build_prompt_dataset, load_prompts, offline_groups_per_step
from mbpo_core.training.progress import ProgressBridge, ProgressCallback
from mbpo_core.training.rewards import TRL_REWARD_FUNCS, TRL_REWARD_MAXIMA, load_reward_funcs
from mbpo_core.training.trainer import HybridGRPOTrainer

# Parameters of the vision encoder proper (the projector stays trainable in full fine-tuning).
VISION_TOWER_PARAMS = re.compile(rf"(^|\.)({'|'.join(VISION_ENCODERS)})\.")
CHECKPOINTS_SUBDIR = "checkpoints"
FINAL_MODEL_SUBDIR = "model"


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    model_dir: Path | None  # the final loadable model; None when cancelled before any checkpoint
    steps: int
    cancelled: bool
    skipped_pairs: dict[str, int] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Turn off gradients of the vision encoder; returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if VISION_TOWER_PARAMS.search(name):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def build_trainer(
    model_dir: str | Path,
    out_dir: str | Path,
    config: MBPOConfig,
    *,
    online: str | Path | None = None,
    pairs: str | Path | None = None,
) -> tuple[HybridGRPOTrainer, dict[str, int]]:
    """The configured trainer for a run (no training yet) and the pairs skipped while loading."""
    train = config.train
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    adapter = load_adapter(model_dir, device="cpu", dtype=dtype)
    model, processor = adapter.model, adapter.processor
    # TRL left-pads prompts; the processor's per-token outputs must be padded the same way.
    processor.tokenizer.padding_side = "left"
    if not train.lora.enabled and train.freeze_vision:
        freeze_vision_tower(model)
    prompts = load_prompts(online, pairs)
    if not prompts.online and not prompts.offline:
        raise ValueError("no training prompts: give an online manifest, mined pairs, or both")
    # cpu=True must be said up front: without CUDA, a plain PartialState() stays single-process.
    processes = PartialState(cpu=device == "cpu").num_processes
    args = grpo_config(
        train,
        output_dir=Path(out_dir) / CHECKPOINTS_SUBDIR,
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16,
        num_processes=processes,
        run_name=Path(out_dir).resolve().parent.name,  # the run directory's name: the service's run id
    )
    extra_rewards, extra_maxima = load_reward_funcs(train.reward_funcs)
    trainer = HybridGRPOTrainer(
        model=model,
        args=args,
        train_dataset=build_prompt_dataset(prompts.online, prompts.offline),
        processing_class=processor,
        offline_groups_per_step=offline_groups_per_step(
            train.offline_fraction,
            train.prompts_per_step,
            len(prompts.online),
            len(prompts.offline),
            processes,
        ),
        offline_ratio=train.offline_ratio,
        peft_config=peft_config(train.lora),
        reward_funcs=[*TRL_REWARD_FUNCS, *extra_rewards],
        reward_maxima=[*TRL_REWARD_MAXIMA, *extra_maxima],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the ProgressCallback instead
    if (tensorboard := tensorboard_callback(train, Path(out_dir))) is not None:
        trainer.add_callback(tensorboard)
    return trainer, prompts.skipped


def train_policy(
    model_dir: str | Path,
    out_dir: str | Path,
    config: MBPOConfig,
    *,
    online: str | Path | None = None,
    pairs: str | Path | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    may_write: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model_dir` on online prompts and/or mined pairs into `out_dir`.

    `out_dir/checkpoints/checkpoint-N` every `save_steps` (and at the end or on a stop request),
    `out_dir/model` the final aligned model. `resume=True` continues from the newest complete
    checkpoint of `out_dir` (a no-op when there is none). `should_stop` is polled between steps;
    when it says yes, the run saves a checkpoint and returns with `cancelled=True`. It is asked once
    before the first step too (loading a large model takes a while): a yes then returns at once,
    with nothing saved. `may_write` fences every checkpoint: asked right before it is
    published, a no raises `checkpoint.WriteFenced`."""
    out = Path(out_dir)
    trainer, skipped = build_trainer(model_dir, out, config, online=online, pairs=pairs)
    trainer.may_write = may_write
    bridge = ProgressBridge(progress, should_stop, agree=_any_process_agrees(trainer))
    trainer.add_callback(bridge)
    run_dir = Path(str(trainer.args.output_dir))
    checkpoint.discard_partial(run_dir)  # what an interrupted attempt's save left
    start = checkpoint.latest_checkpoint(run_dir) if resume else None
    if start is not None:
        start = checkpoint.require_inside(start, out)
    if bridge.agree(bool(should_stop and should_stop())):
        return TrainResult(out_dir=out, model_dir=None, steps=0, cancelled=True, skipped_pairs=skipped)
    trainer.train(resume_from_checkpoint=str(start) if start else None)
    finished = not bridge.cancelled
    final = (
        _publish_final_model(run_dir, out, may_write)
        if finished and trainer.accelerator.is_main_process
        else None
    )
    trainer.accelerator.wait_for_everyone()
    return TrainResult(
        out_dir=out,
        model_dir=final,
        steps=trainer.state.global_step,
        cancelled=bridge.cancelled,
        skipped_pairs=skipped,
        log_history=list(trainer.state.log_history),
    )


def _any_process_agrees(trainer: HybridGRPOTrainer) -> Callable[[bool], bool]:
    def agree(wish: bool) -> bool:
        flag = torch.tensor([1.0 if wish else 0.0], device=trainer.accelerator.device)
        return bool(trainer.accelerator.reduce(flag, reduction="max").item() > 0)

    return agree


def _publish_final_model(run_dir: Path, out: Path, may_write: Callable[[], bool] | None) -> Path | None:
    """Copy the newest checkpoint's loadable model to `out/model` (atomically, via a temp dir)."""
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None:
        return None
    target = out / FINAL_MODEL_SUBDIR
    staging = out / f".{FINAL_MODEL_SUBDIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(latest / checkpoint.MODEL_SUBDIR, staging)
    if may_write is not None and not may_write():
        shutil.rmtree(staging, ignore_errors=True)
        raise checkpoint.WriteFenced("not publishing the final model: this process no longer owns the run")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
