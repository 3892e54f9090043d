"""Group advantages and reward pinning against their naive formulas (docs/method.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from mbpo_core.training.advantages import (
    AnswerRole,
    compute_group_advantages,
    group_roles,
    is_off_policy,
    pin_offline_rewards,
    reward_stats,
)


def naive_advantages(rewards: list[float], group_size: int, eps: float = 1e-4) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        out.extend((r - mean) / (std + eps) for r in group)
    return out


def test_group_advantages_match_the_naive_formula():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (24,), generator=generator).float()
    expected = torch.tensor(naive_advantages(rewards.tolist(), 4))
    torch.testing.assert_close(compute_group_advantages(rewards, 4), expected, rtol=0, atol=1e-6)


def test_zero_variance_group_gets_zero_advantage():
    rewards = torch.tensor([2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 1.0])
    advantages = compute_group_advantages(rewards, 4)
    assert torch.equal(advantages[:4], torch.zeros(4))
    assert advantages[4:].abs().sum() > 0


def test_offline_group_favours_chosen_over_rejected():
    roles = group_roles(torch.tensor([True]), 4)
    sampled_scores = torch.tensor(
        [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    )  # (4 answers, 2 functions)
    rewards = pin_offline_rewards(sampled_scores, roles, torch.tensor([1.0, 1.0])).sum(dim=1)
    assert rewards.tolist() == [2.0, 0.0, 2.0, 1.0]
    advantages = compute_group_advantages(rewards, 4)
    assert advantages[0] > 0 > advantages[1]
    # Even when the policy already answers like the chosen one, the rejected answer is pushed down.
    assert advantages[1] == advantages.min()


def test_group_roles_layout():
    roles = group_roles(torch.tensor([False, True]), 4)
    expected = [AnswerRole.SAMPLED_ONLINE] * 4 + [
        AnswerRole.CHOSEN,
        AnswerRole.REJECTED,
        AnswerRole.SAMPLED_OFFLINE,
        AnswerRole.SAMPLED_OFFLINE,
    ]
    assert roles.tolist() == [int(r) for r in expected]
    assert is_off_policy(roles).tolist() == [False] * 4 + [True, True, False, False]


def test_pinning_leaves_sampled_answers_alone():
    roles = group_roles(torch.tensor([True, False]), 3)
    scores = torch.rand(6, 2)
    pinned = pin_offline_rewards(scores, roles, torch.tensor([1.0, 1.0]))
    assert pinned[0].tolist() == [1.0, 1.0] and pinned[1].tolist() == [0.0, 0.0]
    torch.testing.assert_close(pinned[2:], scores[2:])


def test_reward_stats_by_selection():
    rewards = torch.tensor([0.0, 2.0, 1.0, 1.0])
    assert reward_stats(rewards, torch.tensor([True, True, False, False])) == pytest.approx(
        (1.0, math.sqrt(2.0))
    )
    assert reward_stats(rewards, torch.zeros(4, dtype=torch.bool)) is None
