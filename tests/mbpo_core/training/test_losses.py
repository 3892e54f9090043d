"""Per-token losses and their aggregation against naive loops (losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mbpo_core.training.losses import (
    LUFFY_GAMMA,
    aggregate_token_loss,
    clipped_surrogate_loss,
    k3_kl,
    shaped_offline_loss,
)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(3, 5, generator=g) * 3
    old = logps + (torch.rand(3, 5, generator=g) - 0.5)
    adv = torch.tensor([[1.5], [-0.7], [0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    return logps, old, adv, mask


def test_clipped_surrogate_matches_naive_ppo():
    logps, old, adv, _ = _batch()
    loss, ratio = clipped_surrogate_loss(logps, old, adv, 0.2, 0.28)
    for b in range(3):
        for t in range(5):
            r = math.exp(logps[b, t] - old[b, t])
            a = adv[b, 0].item()
            expected = -min(r * a, min(max(r, 0.8), 1.28) * a)
            assert loss[b, t].item() == pytest.approx(expected, abs=1e-6)
            assert ratio[b, t].item() == pytest.approx(r, rel=1e-6)


def test_shaped_offline_loss_value_and_gradient():
    logps = torch.tensor([[-0.1, -2.0, -5.0]], requires_grad=True)
    adv = torch.tensor([[2.0]])
    loss = shaped_offline_loss(logps, adv)
    p = logps.detach().exp()
    torch.testing.assert_close(loss.detach(), -(p / (p + LUFFY_GAMMA)) * 2.0)
    loss.sum().backward()
    # d/dlogp [-A p/(p+g)] = -A * g p / (p+g)^2: low-probability tokens still get a push (no clipping).
    torch.testing.assert_close(logps.grad, -2.0 * LUFFY_GAMMA * p / (p + LUFFY_GAMMA) ** 2)


def test_k3_kl_is_zero_at_reference_and_positive_elsewhere():
    logps, old, _, _ = _batch()
    assert torch.equal(k3_kl(logps, logps), torch.zeros_like(logps))
    kl = k3_kl(logps, old)
    naive = torch.exp(old - logps) - (old - logps) - 1
    torch.testing.assert_close(kl, naive)
    assert (kl >= 0).all()


def test_aggregations_match_naive_formulas():
    per_token, _, _, mask = _batch(1)
    grpo = sum(sum(per_token[b, t] * mask[b, t] for t in range(5)) / mask[b].sum() for b in range(3)) / 3 / 2
    kwargs = {"max_completion_length": 5, "num_items": mask.sum(), "accumulation_steps": 2}
    assert aggregate_token_loss(per_token, mask, "grpo", **kwargs).item() == pytest.approx(
        grpo.item(), abs=1e-6
    )
    dr = (per_token * mask).sum() / (3 * 5) / 2
    assert aggregate_token_loss(per_token, mask, "dr_grpo", **kwargs).item() == pytest.approx(
        dr.item(), abs=1e-6
    )
    dapo = (per_token * mask).sum() / mask.sum()
    assert aggregate_token_loss(per_token, mask, "dapo", **kwargs).item() == pytest.approx(
        dapo.item(), abs=1e-6
    )
