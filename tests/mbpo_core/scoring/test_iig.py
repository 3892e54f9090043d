"""IIG: null images, and the batched score against a naive one-sample-at-a-time formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.models.loader import adapter_class
from mbpo_core.scoring.iig import compute_iig, null_pixels

WORDS = [
    "is",
    "there",
    "a",
    "red",
    "blue",
    "circle",
    "square",
    "in",
    "the",
    "image",
    "yes",
    "no",
    "two",
    "circles",
]
QUESTIONS = ["is there a red circle in the image?", "is there a blue square?", "how many circles?"]
ANSWERS = ["yes", "no", "two red circles"]  # different token counts in one batch


@pytest.fixture(scope="module")
def adapter() -> VLMAdapter:
    torch.set_num_threads(1)
    processor = build_processor("qwen2_vl", WORDS, image_size=56)
    return adapter_class("qwen2_vl")(build_model("qwen2_vl", processor, "tiny", seed=0), processor)


def pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 56, 56, 3))).float() / 255


def naive_answer_logprob(
    adapter: VLMAdapter, image: torch.Tensor, question: str, answer: str
) -> tuple[float, int]:
    """sum_t log pi(y_t | x, q, y_<t) for one unpadded sample from the full logits."""
    prompt = adapter.prompt_ids(question, image.shape[0], image.shape[1])
    answer_ids = adapter.answer_ids(answer)
    ids = torch.tensor([prompt + answer_ids])
    out = adapter.model(input_ids=ids, **adapter.text_kwargs(ids), **adapter.pixel_inputs(image[None]))
    logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
    total = sum(float(logprobs[len(prompt) + t - 1, tok]) for t, tok in enumerate(answer_ids))
    return total, len(answer_ids)


@pytest.mark.parametrize("kind", ["gray", "noise", "blur"])
def test_compute_iig_matches_naive_loop(adapter: VLMAdapter, kind: str) -> None:
    x = pixels()
    batched = compute_iig(adapter, x, QUESTIONS, ANSWERS, kind, seed=3)
    nulls = null_pixels(x, kind, seed=3)
    expected = []
    with torch.no_grad():
        for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True)):
            real, n = naive_answer_logprob(adapter, x[i], q, a)
            null, _ = naive_answer_logprob(adapter, nulls[i], q, a)
            expected.append((real - null) / n)
    assert batched.shape == (3,)
    torch.testing.assert_close(batched, torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_compute_iig_is_zero_when_the_image_is_its_own_null(adapter: VLMAdapter) -> None:
    gray = torch.full((2, 56, 56, 3), 0.25)
    iig = compute_iig(adapter, gray, QUESTIONS[:2], ANSWERS[:2], "gray")
    torch.testing.assert_close(iig, torch.zeros(2), atol=1e-5, rtol=0)


def test_compute_iig_checks_batch_sizes(adapter: VLMAdapter) -> None:
    with pytest.raises(ValueError):
        compute_iig(adapter, pixels(2), QUESTIONS, ANSWERS)


def test_null_images_keep_shape_and_range() -> None:
    x = pixels(2, seed=1)
    for kind in ("gray", "noise", "blur"):
        null = null_pixels(x, kind)
        assert null.shape == x.shape
        assert float(null.min()) >= 0.0 and float(null.max()) <= 1.0


def test_gray_null_is_the_image_mean() -> None:
    x = pixels(2, seed=2)
    gray = null_pixels(x, "gray")
    for i in range(2):
        torch.testing.assert_close(gray[i], torch.full_like(x[i], float(x[i].mean())))


def test_noise_null_is_seeded() -> None:
    x = pixels(1)
    torch.testing.assert_close(null_pixels(x, "noise", seed=5), null_pixels(x, "noise", seed=5))
    assert not torch.equal(null_pixels(x, "noise", seed=5), null_pixels(x, "noise", seed=6))


def test_blur_null_dissolves_detail_but_keeps_mean_colour() -> None:
    x = torch.zeros(1, 56, 56, 3)
    x[:, 20:36, 20:36, 0] = 1.0  # a red square on black
    blurred = null_pixels(x, "blur")
    assert float(blurred[..., 0].max()) < 0.6  # the square's edge is gone
    assert abs(float(blurred[..., 0].mean()) - float(x[..., 0].mean())) < 0.02


def test_unknown_null_image() -> None:
    with pytest.raises(ValueError, match="unknown null image"):
        null_pixels(pixels(1), "black")
