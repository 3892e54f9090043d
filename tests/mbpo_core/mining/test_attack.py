"""PGD and the random-noise baseline: the math against naive formulas, invariants on a real tiny VLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbpo_core.mining.attack import (
    LogprobFn,
    bucket_by_size,
    pgd_perturb,
    project,
    quantize_uint8,
    random_sign_noise,
)
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.models.loader import adapter_class

EPS, STEP, STEPS = 8 / 255, 2 / 255, 10
QUESTIONS = ["is there a red circle ?", "is there a blue square ?", "how many circle ?"]
ANSWERS = ["yes", "no", "2"]


@pytest.fixture(scope="module")
def adapter() -> VLMAdapter:
    torch.set_num_threads(1)
    processor = build_processor(
        "qwen2_vl", ["is", "there", "red", "blue", "circle", "square", "yes", "no"], image_size=56
    )
    return adapter_class("qwen2_vl")(build_model("qwen2_vl", processor, "tiny", seed=0), processor)


def clean_pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8-valued (n, 56, 56, 3) pixels, as decoded from a PNG."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 56, 56, 3))).float() / 255


def logprob_fn(adapter: VLMAdapter) -> LogprobFn:
    return lambda pixels: adapter.answer_logprobs(pixels, QUESTIONS, ANSWERS)[0]


def attack(adapter: VLMAdapter, clean: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    fn = logprob_fn(adapter)
    return pgd_perturb(
        fn, clean, eps=EPS, step_size=STEP, steps=STEPS, random_start=True, generator=generator
    )


def test_project_is_the_naive_clip() -> None:
    clean, moved = torch.rand(2, 4, 5, 3), torch.rand(2, 4, 5, 3) * 1.4 - 0.2
    expected = np.clip(np.clip(moved.numpy(), clean.numpy() - 0.1, clean.numpy() + 0.1), 0, 1)
    assert np.allclose(project(moved, clean, 0.1).numpy(), expected)


def test_pgd_reaches_the_optimum_of_a_linear_objective() -> None:
    # For log p = <w, x> the minimiser over the box is x0 - eps * sign(w), clipped to [0, 1];
    # eps / step_size steps get there exactly.
    clean, weights = torch.rand(2, 6, 7, 3), torch.randn(2, 6, 7, 3)
    adv = pgd_perturb(lambda x: (weights * x).flatten(1).sum(1), clean, eps=EPS, step_size=STEP, steps=4)
    assert torch.allclose(adv, (clean - EPS * weights.sign()).clamp(0, 1), atol=1e-6)


def test_pgd_with_random_start_is_reproducible_by_seed() -> None:
    clean, weights = torch.rand(1, 5, 5, 3), torch.randn(1, 5, 5, 3)

    def run(seed: int) -> torch.Tensor:
        fn = lambda x: (weights * x).flatten(1).sum(1)  # noqa: E731
        g = torch.Generator().manual_seed(seed)
        return pgd_perturb(fn, clean, eps=EPS, step_size=STEP, steps=1, random_start=True, generator=g)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_pgd_invariants_on_a_tiny_vlm(adapter: VLMAdapter) -> None:
    clean = clean_pixels()
    adv = attack(adapter, clean, seed=0)
    assert float((adv - clean).abs().max()) <= EPS + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        before, after = logprob_fn(adapter)(clean), logprob_fn(adapter)(adv)
    assert bool((after < before).all()), (before, after)


def test_drop_survives_uint8_quantisation(adapter: VLMAdapter) -> None:
    # A random start leaves the iterate off the 1/255 grid, so rounding really moves every pixel, by
    # at most 0.5/255 against the 8/255 the attack spent. Even a random-weight model's log-prob is a
    # smooth function of the pixels, so the drop (about 0.06 nats here, against ~0.001 for random
    # noise of the same budget) keeps most of its size: we require more than half of it, per sample.
    clean = clean_pixels(seed=1)
    adv = attack(adapter, clean, seed=1)
    saved = quantize_uint8(adv)
    assert not torch.equal(saved, adv)
    assert float((saved - clean).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        fn = logprob_fn(adapter)
        before, after, after_saving = fn(clean), fn(adv), fn(saved)
        noise = fn(random_sign_noise(clean, EPS, torch.Generator().manual_seed(0)))
    drop, saved_drop = before - after, before - after_saving
    assert bool((saved_drop > 0.5 * drop).all()), (drop, saved_drop)
    assert bool((saved_drop > 5 * (before - noise).abs()).all())


def test_random_sign_noise_uses_the_whole_budget() -> None:
    clean = torch.full((2, 8, 8, 3), 0.5)
    noisy = random_sign_noise(clean, EPS, torch.Generator().manual_seed(0))
    assert torch.allclose((noisy - clean).abs(), torch.full_like(clean, EPS))
    assert abs(float((noisy - clean).sign().mean())) < 0.15
    edge = random_sign_noise(torch.zeros(1, 4, 4, 3), EPS, torch.Generator().manual_seed(0))
    assert float(edge.min()) == 0.0


def test_quantize_uint8_rounds_to_the_png_grid() -> None:
    x = torch.tensor([0.0, 0.5 / 255 - 1e-6, 1.6 / 255, 1.0])
    assert torch.allclose(quantize_uint8(x) * 255, torch.tensor([0.0, 0.0, 2.0, 255.0]))


def test_bucket_by_size_groups_and_chunks() -> None:
    sizes = [(56, 56), (28, 56), (56, 56), (56, 56), (28, 56)]
    assert bucket_by_size(sizes, 2) == [[0, 2], [3], [1, 4]]
    assert bucket_by_size([], 4) == []
    with pytest.raises(ValueError):
        bucket_by_size(sizes, 0)


def test_a_stop_request_interrupts_the_attack_and_is_never_swallowed_as_a_sample_error() -> None:
    from mbpo_core.mining.attack import Interrupted
    from mbpo_core.mining.mine import map_with_fallback

    pixels = torch.rand(2, 8, 8, 3)
    asked: list[int] = []

    def stop_after_two_steps() -> bool:
        asked.append(1)
        return len(asked) > 2

    def logprob(x: torch.Tensor) -> torch.Tensor:
        return -(x**2).flatten(1).sum(1)

    with pytest.raises(Interrupted):
        pgd_perturb(logprob, pixels, eps=0.1, step_size=0.05, steps=10, should_stop=stop_after_two_steps)
    assert len(asked) == 3  # two steps ran, the third was not started

    def attack_group(group: list[int]) -> list[torch.Tensor]:
        return [
            pgd_perturb(logprob, pixels[group], eps=0.1, step_size=0.05, steps=3, should_stop=lambda: True)
        ]

    with pytest.raises(Interrupted):
        map_with_fallback(attack_group, 2)  # not retried sample by sample, not counted as an error
