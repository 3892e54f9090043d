"""Hybrid offline/online GRPO (docs/method.md §5) as a subclass of TRL's `GRPOTrainer`.

TRL does the work: sampling, the clean-image forward passes, reference log-probs, the clipped loss,
distributed training. This subclass changes four things, in the order a step runs:

1. data      `_get_train_sampler`: every step holds an exact share of offline groups (data.py).
2. rollout   `_generate`: in an offline group the first two answers are the mined chosen and
             rejected answers instead of samples, so a step samples 2 answers fewer per offline group.
             Every answer is then scored by TRL in the context of the clean image.
3. rewards   `_calculate_rewards` pins chosen = maximum and rejected = 0; `_generate_and_score_completions`
             sets the group-normalised advantages (advantages.py) and logs rewards per source.
4. loss      offline_ratio="on_policy": TRL's loss unchanged (old log-probs of every answer are the
             current policy's, detached, so the ratio of a mined answer starts at 1).
             offline_ratio="luffy": mined answers use the shaped, unclipped ratio p/(p+0.1) (losses.py).

Checkpoints are TRL's, written to a staging directory and published by an atomic rename (checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from mbpo_core.training import checkpoint
from mbpo_core.training.advantages import (
    AnswerRole,
    compute_group_advantages,
    group_roles,
    is_off_policy,
    pin_offline_rewards,
    reward_stats,
)
from mbpo_core.training.data import MixedGroupSampler, min_sampled_answers_per_process, source_counts
from mbpo_core.training.losses import (
    LossType,
    aggregate_token_loss,
    clipped_surrogate_loss,
    k3_kl,
    shaped_offline_loss,
)
from mbpo_core.training.rewards import TRL_REWARD_FUNCS, TRL_REWARD_MAXIMA

OfflineRatio = Literal["on_policy", "luffy"]

# Model inputs besides token ids that TRL's forward pass forwards for vision-language models.
_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class HybridGRPOTrainer(GRPOTrainer):
    def __init__(
        self,
        *,
        model: Any,
        args: GRPOConfig,
        train_dataset: Dataset,
        processing_class: Any,
        offline_groups_per_step: int,
        offline_ratio: OfflineRatio = "on_policy",
        reward_funcs: Sequence[Callable[..., list[float]]] = TRL_REWARD_FUNCS,
        reward_maxima: Sequence[float] = TRL_REWARD_MAXIMA,
        peft_config: Any = None,
        callbacks: list[Any] | None = None,
    ):
        super().__init__(
            model=model,
            reward_funcs=list(reward_funcs),  # type: ignore[arg-type]
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        self.offline_ratio = offline_ratio
        self.offline_groups_per_step = offline_groups_per_step
        self.grpo_args = args
        # Asked right before a checkpoint is published (None: always publish); see checkpoint.publish.
        self.may_write: Callable[[], bool] | None = None
        # The TRL arguments this subclass relies on; GRPOConfig.__post_init__ has filled them in.
        assert args.num_generations and args.steps_per_generation and args.generation_batch_size
        assert args.max_completion_length
        self.group_size: int = args.num_generations
        self.steps_per_generation: int = args.steps_per_generation
        self.groups_per_step: int = args.generation_batch_size // args.num_generations
        self.loss_name = cast(LossType, args.loss_type)
        self.completion_budget: int = args.max_completion_length
        self.reward_maxima = torch.tensor(list(reward_maxima), dtype=torch.float32)
        self.source_counts = source_counts(train_dataset)
        self._check_supported()
        self._local_roles = torch.empty(0, dtype=torch.long)
        self._local_fixed_answers: list[str | None] = []
        self._global_roles = torch.empty(0, dtype=torch.long)
        self._pinned_rewards = torch.empty(0, len(self.reward_funcs))

    def _check_supported(self) -> None:
        groups_per_step = self.groups_per_step
        if self.num_iterations != 1 or self.steps_per_generation != self.args.gradient_accumulation_steps:
            raise ValueError("hybrid GRPO generates once per optimiser step (num_iterations=1)")
        if self.use_vllm or self.tools:
            raise ValueError("hybrid GRPO supports neither vLLM nor tools")
        processes = self.accelerator.num_processes
        if groups_per_step % processes:
            raise ValueError(f"{groups_per_step} groups per step do not split over {processes} processes")
        if self.offline_groups_per_step % processes:
            raise ValueError(
                "offline groups per step must split evenly over the processes (equal sample counts)"
            )
        if self.offline_groups_per_step and not self.source_counts[1]:
            raise ValueError("offline groups requested but there are no mined pairs")
        if (
            min_sampled_answers_per_process(
                groups_per_step, self.offline_groups_per_step, self.group_size, processes
            )
            < 1
        ):
            raise ValueError("with num_generations=2 every process needs an online group to sample")
        if self.offline_ratio == "luffy" and (
            self.importance_sampling_level != "token"
            or self.top_entropy_quantile < 1.0
            or self._entropy_bonus_enabled
            or self.off_policy_mask_threshold is not None
            or self.grpo_args.delta is not None
        ):
            raise ValueError(
                "offline_ratio='luffy' implements TRL's token-level loss without its extra terms"
            )

    # 1. data -------------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset: Any = None) -> MixedGroupSampler:
        n_online, n_offline = self.source_counts if dataset is None else source_counts(dataset)
        return MixedGroupSampler(
            n_online=n_online,
            n_offline=n_offline,
            groups_per_step=self.groups_per_step,
            offline_per_step=self.offline_groups_per_step,
            group_size=self.group_size,
            num_steps=self.args.max_steps,
            num_processes=self.accelerator.num_processes,
            repeat_count=self.steps_per_generation,
            seed=self.args.seed,
        )

    # 2. rollout ----------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._local_roles = self._roles_of(inputs)
        self._local_fixed_answers = [
            _mined_answer(row, role) for row, role in zip(inputs, self._local_roles.tolist(), strict=True)
        ]
        output = super()._generate_and_score_completions(inputs)
        rewards = (self._pinned_rewards * self.reward_weights.to(self._pinned_rewards)).nansum(dim=1)
        advantages = compute_group_advantages(rewards, self.group_size)
        local = slice(
            self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs)
        )
        output["advantages"] = advantages[local].to(output["advantages"])
        output["off_policy_mask"] = is_off_policy(self._local_roles).to(self.accelerator.device)
        self._log_rewards_by_source(rewards, self._global_roles.to(rewards.device))
        return output

    def _roles_of(self, inputs: list[dict[str, Any]]) -> torch.Tensor:
        """Roles of this process's rows; the sampler gives every process whole groups."""
        group_size = self.group_size
        if len(inputs) % group_size:
            raise RuntimeError("a process received a partial group")
        groups = [inputs[i : i + group_size] for i in range(0, len(inputs), group_size)]
        if any(len({row["id"] for row in group}) != 1 for group in groups):
            raise RuntimeError("a group mixes prompts; the batch layout is not the sampler's")
        is_offline = torch.tensor([group[0]["mined_chosen"] is not None for group in groups])
        return group_roles(is_offline, group_size)

    def _generate(self, prompts: list[Any]) -> tuple[Any, ...]:
        """Sample only the answers that are not mined; splice the mined ones in at their rows."""
        fixed = [i for i, answer in enumerate(self._local_fixed_answers) if answer is not None]
        if not fixed:
            return super()._generate(prompts)
        fixed_rows = set(fixed)
        sampled = [i for i in range(len(prompts)) if i not in fixed_rows]
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, _, tool_images = (
            super()._generate([prompts[i] for i in sampled])
        )
        fixed_prompt_ids, _, _ = self._tokenize_prompts([prompts[i] for i in fixed])
        fixed_completion_ids = [self._answer_token_ids(self._local_fixed_answers[i] or "") for i in fixed]
        fixed_texts = self._tokenizer.batch_decode(fixed_completion_ids, skip_special_tokens=True)
        fixed_completions = [[{"role": "assistant", "content": text}] for text in fixed_texts]
        merged_prompt_ids = _splice(len(prompts), sampled, list(prompt_ids), fixed, list(fixed_prompt_ids))
        merged_completion_ids = _splice(len(prompts), sampled, completion_ids, fixed, fixed_completion_ids)
        merged_completions = _splice(len(prompts), sampled, completions, fixed, fixed_completions)
        # images=None: TRL then uses the dataset's clean images of every row, mined ones included.
        return (
            merged_prompt_ids,
            merged_completion_ids,
            tool_mask,
            merged_completions,
            logprobs,
            extra,
            None,
            tool_images,
        )

    def _answer_token_ids(self, text: str) -> list[int]:
        """A mined answer as the policy would emit it: its tokens, then end-of-sequence."""
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"] + [self._tokenizer.eos_token_id]
        return ids[: self.max_completion_length]

    # 3. rewards ----------------------------------------------------------------------------------

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._global_roles = self.accelerator.gather(self._local_roles.to(self.accelerator.device)).cpu()
        maxima = self.reward_maxima.to(rewards_per_func.device)
        self._pinned_rewards = pin_offline_rewards(
            rewards_per_func, self._global_roles.to(rewards_per_func.device), maxima
        )
        return self._pinned_rewards

    def _log_rewards_by_source(self, rewards: torch.Tensor, roles: torch.Tensor) -> None:
        sources = {
            "online": roles == AnswerRole.SAMPLED_ONLINE,
            "offline_sampled": roles == AnswerRole.SAMPLED_OFFLINE,
        }
        for name, selected in sources.items():
            stats = reward_stats(rewards, selected)
            if stats is not None:
                self._metrics["train"][f"rewards/{name}/mean"].append(stats[0])
                self._metrics["train"][f"rewards/{name}/std"].append(stats[1])
        self._metrics["train"]["offline_group_fraction"].append(
            float((roles == AnswerRole.CHOSEN).sum().item() / max(roles.numel() // self.group_size, 1))
        )

    # 4. loss -------------------------------------------------------------------------------------

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        # Decided by configuration, never by the batch: every process must run the same collectives.
        if self.offline_ratio == "luffy":
            return self._loss_with_shaped_offline_ratio(model, inputs)
        return super()._compute_loss(model, inputs)

    def _loss_with_shaped_offline_ratio(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's clipped loss for sampled answers, LUFFY's shaped ratio for mined ones, one aggregation."""
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], mask], dim=1)
        multimodal = {key: inputs.get(key) for key in _MULTIMODAL_KEYS}
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True, **multimodal
        )
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"].unsqueeze(1)
        sampled_loss, ratio = clipped_surrogate_loss(
            logps, old_logps, advantages, self.epsilon_low, self.epsilon_high
        )
        off_policy = inputs["off_policy_mask"].unsqueeze(1)
        per_token_loss = torch.where(off_policy, shaped_offline_loss(logps, advantages), sampled_loss)
        if self.beta != 0.0:
            kl = k3_kl(logps, inputs["ref_per_token_logps"])
            if self.grpo_args.use_bias_correction_kl:  # TRL's default: KL importance-weighted by the ratio
                kl = kl * ratio
            per_token_loss = per_token_loss + self.beta * kl
            self._metrics["train"]["kl"].append(self._global_masked_mean(kl, mask))
        num_items = (
            inputs["num_items_in_batch"].clamp(min=1.0)
            / self.accelerator.num_processes
            * self.current_gradient_accumulation_steps
            / self.steps_per_generation
        )
        loss = aggregate_token_loss(
            per_token_loss,
            mask,
            self.loss_name,
            max_completion_length=self.completion_budget,
            num_items=num_items,
            accumulation_steps=self.current_gradient_accumulation_steps,
        )
        self._metrics["train"]["entropy"].append(self._global_masked_mean(entropies, mask))
        clipped = ((ratio < 1 - self.epsilon_low) & (advantages < 0)) | (
            (ratio > 1 + self.epsilon_high) & (advantages > 0)
        )
        sampled_mask = mask * (~off_policy)
        self._metrics["train"]["clip_ratio/region_mean"].append(
            self._global_masked_mean(clipped.float(), sampled_mask)
        )
        return loss

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        totals = torch.stack([(values.detach() * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    # checkpoints ---------------------------------------------------------------------------------

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint, written into a staging directory and published by an atomic rename."""
        run_dir, step = Path(str(self.args.output_dir)), self.state.global_step
        staging = checkpoint.staging_dir(run_dir, step)
        with checkpoint.redirected_output_dir(self.args, staging):
            super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            checkpoint.publish(
                staging / f"checkpoint-{step}",
                run_dir,
                step,
                write_model=self._write_loadable_model,
                keep=self.args.save_total_limit,
                may_write=self.may_write,
            )
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Full fine-tuning: read the weights back through `from_pretrained`. transformers saves a VLM
        in its checkpoint key layout (Qwen2-VL: `model.layers.*`, `visual.*`), which Trainer's plain
        `load_state_dict` would silently miss; `from_pretrained` maps the keys."""
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if is_peft_model(unwrapped) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        saved = type(unwrapped).from_pretrained(resume_from_checkpoint, dtype=unwrapped.dtype)
        unwrapped.load_state_dict(saved.state_dict())

    def _write_loadable_model(self, target: Path) -> None:
        model = self.accelerator.unwrap_model(self.model)
        checkpoint.write_loadable_model(model, self.processing_class, target)


def _mined_answer(row: dict[str, Any], role: int) -> str | None:
    """The mined text a row's answer is fixed to, or None when the policy samples it."""
    if role == AnswerRole.CHOSEN:
        return str(row["mined_chosen"])
    if role == AnswerRole.REJECTED:
        return str(row["mined_rejected"])
    return None


def _splice(
    n: int, sampled: list[int], sampled_values: list[Any], fixed: list[int], fixed_values: list[Any]
) -> list[Any]:
    """Rows 0..n-1 with `sampled_values` at the `sampled` positions and `fixed_values` at `fixed`."""
    merged: list[Any] = [None] * n
    for i, value in zip(sampled, sampled_values, strict=True):
        merged[i] = value
    for i, value in zip(fixed, fixed_values, strict=True):
        merged[i] = value
    return merged
