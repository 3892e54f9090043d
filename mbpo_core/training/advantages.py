"""Group rewards and advantages of hybrid GRPO (docs/method.md §5), as pure tensor functions.

A batch of N = n_groups * G answers is laid out group by group: rows [g*G, (g+1)*G) answer the same
prompt. In an offline group (a mined pair) the first two rows are the chosen and the rejected answer,
the other G-2 are sampled from the current policy on the clean image; an online group is G samples.
"""

from __future__ import annotations

from enum import IntEnum

import torch


class AnswerRole(IntEnum):
    """Where one answer of a group comes from; stored as an integer tensor so it can be gathered."""

    SAMPLED_ONLINE = 0  # sampled by the current policy for an online prompt
    SAMPLED_OFFLINE = 1  # sampled by the current policy for a mined pair's prompt (clean image)
    CHOSEN = 2  # the mined pair's ground-truth answer: off-policy, reward = maximum
    REJECTED = 3  # the mined pair's hard negative (decoded on the perturbed image): off-policy, reward 0


def group_roles(is_offline_group: torch.Tensor, group_size: int) -> torch.Tensor:
    """Role of every answer, (n_groups,) bool -> (n_groups * G,) long.

    Offline group: [CHOSEN, REJECTED, SAMPLED_OFFLINE x (G-2)]; online group: [SAMPLED_ONLINE x G]."""
    if group_size < 2:
        raise ValueError("a group needs at least 2 answers")
    offline_layout = torch.full((group_size,), int(AnswerRole.SAMPLED_OFFLINE), dtype=torch.long)
    offline_layout[0], offline_layout[1] = int(AnswerRole.CHOSEN), int(AnswerRole.REJECTED)
    online_layout = torch.full((group_size,), int(AnswerRole.SAMPLED_ONLINE), dtype=torch.long)
    layout = torch.where(is_offline_group.view(-1, 1).bool(), offline_layout, online_layout)
    return layout.reshape(-1)


def is_off_policy(roles: torch.Tensor) -> torch.Tensor:
    """(N,) long -> (N,) bool: answers the current policy did not sample (chosen and rejected)."""
    return (roles == AnswerRole.CHOSEN) | (roles == AnswerRole.REJECTED)


def pin_offline_rewards(
    rewards_per_func: torch.Tensor, roles: torch.Tensor, maxima: torch.Tensor
) -> torch.Tensor:
    """Fix the rewards of the mined answers: chosen = every reward function's maximum, rejected = 0.

    rewards_per_func (N, F) as the reward functions scored them, roles (N,), maxima (F,) -> (N, F).
    The rejected answer is wrong by construction (the verifier said so when it was mined), and the
    chosen one is the ground truth, so neither needs scoring; sampled answers keep their scores."""
    pinned = rewards_per_func.clone()
    pinned[roles == AnswerRole.CHOSEN] = maxima.to(pinned)
    pinned[roles == AnswerRole.REJECTED] = 0.0
    return pinned


def compute_group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r_group)) / (std(r_group) + eps), (N,) -> (N,).

    std is the unbiased (Bessel-corrected) standard deviation, as in TRL's GRPOTrainer, so plain online
    groups get exactly TRL's advantages. A group whose rewards are all equal carries no preference:
    its numerator is exactly 0, so its advantages are 0 (GRPO, Shao et al. 2024, eq. 3 with eps)."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def reward_stats(rewards: torch.Tensor, selected: torch.Tensor) -> tuple[float, float] | None:
    """(mean, std) of `rewards` (N,) over the rows where `selected` (N,) is true; None when none is."""
    values = rewards[selected]
    if values.numel() == 0:
        return None
    std = values.std().item() if values.numel() > 1 else 0.0
    return values.mean().item(), std
