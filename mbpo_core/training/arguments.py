"""The one place where `MBPOConfig.train` becomes TRL's `GRPOConfig` and peft's `LoraConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl import GRPOConfig

from mbpo_core.config import LoraConfig, TrainConfig
from mbpo_core.models.base import VISION_ENCODERS, VISION_PROJECTORS

# TensorBoard event files, beside the checkpoints: <run>/training/tensorboard.
TENSORBOARD_SUBDIR = "tensorboard"
# Which package each `train.report_to` tracker needs.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}

# The vision side of every family (encoder and projector) never gets LoRA adapters.
VISION_MODULE_PATTERN = rf".*\b({'|'.join(VISION_ENCODERS + VISION_PROJECTORS)})\b.*"


def grpo_config(
    train: TrainConfig,
    *,
    output_dir: str | Path,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    num_processes: int = 1,
    run_name: str | None = None,
) -> GRPOConfig:
    """TRL arguments for a run. One generation batch per optimiser step (steps_per_generation = GA),
    so a step's groups are sampled by the policy being updated; checkpoints every `save_steps`."""
    rows_per_step = train.prompts_per_step * train.num_generations
    if train.prompts_per_step % num_processes or rows_per_step % (
        num_processes * train.gradient_accumulation_steps
    ):
        raise ValueError(
            f"train.prompts_per_step={train.prompts_per_step} does not split over {num_processes} processes "
            f"x {train.gradient_accumulation_steps} accumulation steps"
        )
    return GRPOConfig(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=bf16 and not use_cpu,
        gradient_checkpointing=train.gradient_checkpointing and not use_cpu,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        per_device_train_batch_size=rows_per_step // (num_processes * train.gradient_accumulation_steps),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        steps_per_generation=train.gradient_accumulation_steps,
        num_generations=train.num_generations,
        temperature=train.temperature,
        max_completion_length=train.max_completion_length,
        beta=train.beta,
        epsilon=train.epsilon,
        loss_type=train.loss_type,
        scale_rewards="group",
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.keep_checkpoints,
        logging_steps=1,
        # TensorBoard is added by the session with its own log directory (tensorboard_callback).
        report_to=[name for name in dict.fromkeys(train.report_to) if name != "tensorboard"],
        run_name=run_name,
        disable_tqdm=True,
        remove_unused_columns=False,  # the reward functions read task/answer/choices
        dataloader_num_workers=0,
        log_completions=False,
    )


def tensorboard_callback(train: TrainConfig, training_dir: Path) -> Any:
    """transformers' TensorBoard callback writing to `training_dir/tensorboard` when `report_to`
    names it (transformers itself would pick `output_dir/runs/<date>`), else None."""
    if "tensorboard" not in train.report_to:
        return None
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(training_dir / TENSORBOARD_SUBDIR)))


def missing_trackers(report_to: Sequence[str]) -> list[str]:
    """The trackers of `train.report_to` whose package is not installed here."""
    import importlib.util

    return [name for name in report_to if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]


def peft_config(lora: LoraConfig) -> Any:
    """peft LoRA on the language model's linear layers; None for full fine-tuning."""
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        exclude_modules=VISION_MODULE_PATTERN,
        task_type="CAUSAL_LM",
    )
