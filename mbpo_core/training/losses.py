"""Per-token policy losses of hybrid GRPO and their aggregation, as pure tensor functions.

Shapes: B answers, T completion tokens; `mask` (B, T) is 1 on answer tokens. `advantages` (B, 1).
The clipped surrogate, the k3 KL estimator and the three aggregations are TRL's GRPO family
(`loss_type` grpo / dr_grpo / dapo); the trainer's parity test pins these functions to TRL's numbers.
"""

from __future__ import annotations

from typing import Literal

import torch

LossType = Literal["grpo", "dr_grpo", "dapo"]

# LUFFY's policy-shaping constant: f(p) = p / (p + gamma) (Yan et al. 2025, "Learning to Reason under
# Off-Policy Guidance", eq. 6), which boosts the gradient of low-probability tokens of the guidance.
LUFFY_GAMMA = 0.1


def clipped_surrogate_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped objective per token (GRPO, Shao et al. 2024, eq. 3), negated to a loss.

    ratio = exp(logps - old_logps); loss = -min(ratio * A, clip(ratio, 1-eps_low, 1+eps_high) * A).
    Returns (loss (B, T), ratio (B, T))."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages), ratio


def shaped_offline_loss(
    logps: torch.Tensor, advantages: torch.Tensor, gamma: float = LUFFY_GAMMA
) -> torch.Tensor:
    """LUFFY's shaped importance weight for off-policy answers, no clipping: loss = -f(p) * A, (B, T).

    p = exp(logps) is the current policy's probability of the given token; the behaviour policy of a
    mined answer is taken as deterministic (probability 1), so the ratio is p itself, shaped by
    f(p) = p / (p + gamma)."""
    prob = torch.exp(logps)
    return -(prob / (prob + gamma)) * advantages


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative KL(pi || pi_ref) estimator per token (Schulman's k3), (B, T):
    exp(ref - logp) - (ref - logp) - 1."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    *,
    max_completion_length: int,
    num_items: torch.Tensor | float,
    accumulation_steps: int,
) -> torch.Tensor:
    """Reduce (B, T) to the scalar one micro-batch contributes, TRL's normalisations:

    grpo:    mean over answers of the per-answer token mean, / accumulation_steps
    dr_grpo: token sum / (B * max_completion_length), / accumulation_steps (Liu et al. 2025)
    dapo:    token sum / num_items, the answer tokens of the whole accumulation window on this process
             (Yu et al. 2025), so long and short answers weigh by their tokens."""
    masked = per_token_loss * mask
    if loss_type == "grpo":
        per_answer = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_answer.mean() / accumulation_steps
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.size(0) * max_completion_length) / accumulation_steps
    if loss_type == "dapo":
        items = num_items if isinstance(num_items, torch.Tensor) else torch.tensor(num_items)
        return masked.sum() / items.clamp(min=1.0)
    raise ValueError(f"unsupported loss_type {loss_type!r}")
