"""The one run configuration: the API's request schema and what `mbpo_core` executes.

Every field is documented with the reason it exists; docs/method.md describes the method.
Sections are frozen pydantic models with ``extra="forbid"`` so a typo is an error naming the field,
never a silently ignored setting. This module must stay free of torch (the API imports it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

NullImage = Literal["gray", "noise", "blur"]
# Integers and booleans are strict ("20" or true is not a step count); floats accept what YAML gives
# ("1e-5" is a string to YAML 1.1) but never NaN or infinity.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Ceilings that keep one run spec from exhausting a worker host (issue: bounded input). Generous for
# real runs; a run needing more is not one host's job anyway.
MAX_BATCH = 4096
MAX_TOKENS = 32768
MAX_STEPS = 1_000_000
MAX_SAMPLES = 100_000_000
MAX_GROUP_ANSWERS_PER_RUN = 1_000_000_000  # max_steps * prompts_per_step * num_generations


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IIGConfig(_Section):
    """Image Information Gain scoring and the offline-pool filter (docs/method.md §1)."""

    null_image: NullImage = Field(
        "gray",
        description="Neutral image replacing the real one. 'gray' keeps token positions and carries no "
        "content; 'noise' and 'blur' are alternatives for models that read gray as a cue.",
    )
    keep_fraction: FiniteFloat = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the offline pool kept, highest IIG first: the samples whose ground truth "
        "truly needs the image are the ones worth attacking.",
    )
    min_iig: FiniteFloat | None = Field(
        None,
        description="Absolute IIG threshold; when set it replaces keep_fraction.",
    )
    batch_size: StrictInt = Field(
        16, ge=1, le=MAX_BATCH, description="Samples per teacher-forced forward pass."
    )


class AttackConfig(_Section):
    """Projected gradient descent on the clean image (docs/method.md §2)."""

    eps: FiniteFloat = Field(
        8 / 255, gt=0, le=1, description="L-inf budget in [0,1] pixel space (8/255 is invisible)."
    )
    step_size: FiniteFloat = Field(2 / 255, gt=0, le=1, description="Size of each sign-gradient step.")
    steps: StrictInt = Field(10, ge=1, le=1000, description="PGD iterations.")
    random_start: StrictBool = Field(False, description="Start from a uniform point in the eps-ball.")
    batch_size: StrictInt = Field(
        8, ge=1, le=MAX_BATCH, description="Images attacked together (same-size images are bucketed)."
    )

    @model_validator(mode="after")
    def _step_within_budget(self) -> AttackConfig:
        if self.step_size > self.eps:
            raise ValueError("attack.step_size must not exceed attack.eps")
        return self


class MiningConfig(_Section):
    """Hard-negative mining on the perturbed image (docs/method.md §3)."""

    max_new_tokens: StrictInt = Field(16, ge=1, le=512, description="Decode budget for the rejected answer.")
    do_sample: StrictBool = Field(False, description="Greedy decoding (default) makes mining reproducible.")
    limit: StrictInt | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Cap on pool samples considered (after IIG filter)."
    )
    random_noise_baseline: StrictBool = Field(
        True, description="Also attack with uniform sign noise of the same budget, for comparison."
    )
    attack_clean_wrong: StrictBool = Field(
        False,
        description="Also attack the samples the model already answers wrongly on the clean image and "
        "keep their pairs (chosen = the ground truth, rejected = the answer on the perturbed image). "
        "These are the model's own hallucinations, mostly answers of its language prior, which an "
        "attack on correctly answered samples never reaches. Attack success and prior agreement "
        "rates are still computed over correctly answered samples only.",
    )
    balance_yes_no: StrictBool = Field(
        True,
        description="Keep as many yes/no pairs whose chosen answer is 'yes' as 'no' (highest IIG first). "
        "An attack hides evidence far more easily than it invents it, so unbalanced pairs are mostly "
        "'chosen yes, rejected no' and teach the label instead of looking. Nothing is dropped when one "
        "side has no pair at all.",
    )


class LoraConfig(_Section):
    """Parameter-efficient fine-tuning with peft."""

    enabled: StrictBool = Field(True, description="Train LoRA adapters instead of all weights.")
    r: StrictInt = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: StrictInt = Field(32, ge=1, le=4096, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: FiniteFloat = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Language-model linear layers that get adapters (the vision tower is never adapted).",
    )


# Entry point names of `train.reward_funcs` (what `[project.entry-points."mbpo.rewards"]` may hold).
REWARD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class TrainConfig(_Section):
    """Hybrid offline/online GRPO (docs/method.md §4-5)."""

    offline_fraction: FiniteFloat = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of groups per batch built from mined pairs; 0 = plain online GRPO.",
    )
    offline_ratio: Literal["on_policy", "luffy"] = Field(
        "on_policy",
        description="Importance ratio for off-policy offline answers: 'on_policy' treats them as sampled "
        "by the current policy (ratio starts at 1); 'luffy' shapes it as p/(p+0.1) without clipping.",
    )
    num_generations: StrictInt = Field(
        4, ge=2, le=256, description="Group size G (offline groups: chosen, rejected, G-2 samples)."
    )
    temperature: FiniteFloat = Field(1.0, gt=0, le=10, description="Sampling temperature of online answers.")
    max_completion_length: StrictInt = Field(
        16, ge=1, le=MAX_TOKENS, description="Token budget of a sampled answer."
    )
    beta: FiniteFloat = Field(0.04, ge=0, le=100, description="KL coefficient to the frozen reference model.")
    epsilon: FiniteFloat = Field(0.2, gt=0, le=10, description="PPO clip range of the ratio.")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field("dapo", description="TRL's loss normalisation.")
    learning_rate: FiniteFloat = Field(1e-5, gt=0, le=1, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: StrictInt = Field(0, ge=0, le=MAX_STEPS, description="Linear warm-up steps.")
    max_steps: StrictInt = Field(100, ge=1, le=MAX_STEPS, description="Optimiser steps.")
    prompts_per_step: StrictInt = Field(
        4, ge=1, le=MAX_BATCH, description="Groups (prompts) per optimiser step."
    )
    gradient_accumulation_steps: StrictInt = Field(
        1, ge=1, le=MAX_BATCH, description="Micro-batches per optimiser step."
    )
    save_steps: StrictInt = Field(
        25, ge=1, le=MAX_STEPS, description="Checkpoint every N steps (and at the end)."
    )
    keep_checkpoints: StrictInt | None = Field(
        3,
        ge=1,
        le=1000,
        description="Keep only the newest N complete checkpoints, older ones are deleted after each "
        "save (each holds a full model); null keeps all.",
    )
    gradient_checkpointing: StrictBool = Field(
        True, description="Recompute activations in the backward pass to save GPU memory; always off on CPU."
    )
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig.model_validate({}))
    freeze_vision: StrictBool = Field(
        True, description="Keep the vision tower frozen (the usual and cheaper choice)."
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        max_length=3,
        description="Experiment trackers that also receive the training metrics, through transformers' "
        "integrations (optional extra `mbpo[tracking]`); where they write is set by the deployment "
        "(MBPO_MLFLOW_TRACKING_URI, MBPO_WANDB_*; TensorBoard: the run's training/tensorboard).",
    )
    reward_funcs: list[Annotated[str, Field(pattern=REWARD_NAME_PATTERN, max_length=100)]] = Field(
        default_factory=list,
        max_length=8,
        description="Extra reward functions, by the name of an installed `mbpo.rewards` entry point "
        "(TRL's reward_funcs signature, with a `max_reward` attribute); added to the verified accuracy "
        "and format rewards. Never loaded from uploaded code.",
    )

    @model_validator(mode="after")
    def _offline_groups_need_room(self) -> TrainConfig:
        if self.offline_fraction == 1 and self.num_generations == 2:
            raise ValueError(
                "train.offline_fraction=1 with num_generations=2 leaves nothing to sample "
                "(an offline group is chosen, rejected and G-2 samples)"
            )
        if (self.prompts_per_step * self.num_generations) % self.gradient_accumulation_steps:
            raise ValueError(
                "train.prompts_per_step * num_generations answers must split into gradient_accumulation_steps"
            )
        if self.lora.enabled and not self.freeze_vision:
            raise ValueError(
                "train.freeze_vision=false needs full fine-tuning (lora.enabled=false): "
                "LoRA never adapts the "
                "vision tower"
            )
        answers = self.max_steps * self.prompts_per_step * self.num_generations
        if answers > MAX_GROUP_ANSWERS_PER_RUN:
            raise ValueError(
                f"train.max_steps * prompts_per_step * num_generations = {answers:,} answers; at most "
                f"{MAX_GROUP_ANSWERS_PER_RUN:,} per run"
            )
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError("train.warmup_steps must be smaller than train.max_steps")
        return self


class EvalConfig(_Section):
    """POPE-style and VQA evaluation (docs/method.md §6)."""

    limit: StrictInt | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Samples per split (yes/no balance kept)."
    )
    batch_size: StrictInt = Field(32, ge=1, le=MAX_BATCH, description="Samples per generation batch.")
    max_new_tokens: StrictInt = Field(
        8, ge=1, le=MAX_TOKENS, description="Decode budget for close-ended answers."
    )
    attack_eval: StrictBool = Field(
        True, description="Also measure attack success of a fresh PGD on the model."
    )


class MBPOConfig(_Section):
    """A whole MBPO run: score -> mine -> train -> evaluate."""

    seed: StrictInt = Field(0, ge=0, le=2**63 - 1, description="Seed for every random choice of the run.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on GPU, float32 on CPU."
    )
    iig: IIGConfig = Field(default_factory=IIGConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> MBPOConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(apply_overrides(data, overrides))


# ---- dotted overrides (`mbpo run --set train.learning_rate=1e-5`) ---------------------------------

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class OverrideError(ValueError):
    """A `--set` assignment that is not `dotted.key=value`, or that crosses a non-mapping."""


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (1e-5, true, null, [1, 2], {"a": 1}), else YAML
    (`yes`, unquoted words), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(
    data: dict[str, Any],
    assignments: Sequence[str],
    *,
    prefix: str = "",
    top_level: Sequence[str] = (),
) -> dict[str, Any]:
    """`data` with each `dotted.key=value` of `assignments` set (a copy; nested mappings created as
    needed). `prefix` is put before keys whose first part is not in `top_level` (`mbpo run` specs
    hold the MBPOConfig under `config.`, so `train.learning_rate` means `config.train.learning_rate`).
    Validation of the result (unknown fields, types, bounds) is the model's, which names the field."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise OverrideError(f"--set {assignment!r}: expected dotted.key=value, e.g. train.max_steps=50")
        if prefix and key.split(".")[0] not in top_level:
            key = f"{prefix}.{key}"
        *parents, leaf = key.split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise OverrideError(f"--set {assignment!r}: {where} is a value, not a section")
            node = child
        node[leaf] = parse_value(raw.strip())
    return out
