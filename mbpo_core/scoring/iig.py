"""Image Information Gain (docs/method.md §1): how much an answer depends on the image.

    IIG(x, q, y) = (1/|y|) * sum_t [ log pi(y_t | x, q, y_<t) - log pi(y_t | x_null, q, y_<t) ]

`x_null` is a content-free image of the same size (so the prompt has the same image tokens at
the same positions), built in [0,1] pixel space before the model's own preprocessing:
- `gray`:  every pixel the image's mean intensity (keeps overall brightness, removes everything else);
- `noise`: uniform noise, seeded, so scores are reproducible;
- `blur`:  a Gaussian blur wide enough (sigma = size/8) to dissolve objects into colour clouds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.nn import functional as F

from mbpo_core.models.base import Pixels, VLMAdapter

NullImage = Literal["gray", "noise", "blur"]
NULL_IMAGES: tuple[str, ...] = ("gray", "noise", "blur")


def _gaussian_blur(pixels: Pixels, sigma: float) -> Pixels:
    """Separable Gaussian blur of (B, H, W, 3) with reflected borders."""
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = pixels.permute(0, 3, 1, 2)  # (B, 3, H, W)
    channels = x.shape[1]
    # Reflect padding needs pad < size; larger blurs are clamped to what the image allows.
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    k = kernel[radius - pad_w : radius + pad_w + 1]
    x = F.conv2d(
        F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    k = kernel[radius - pad_h : radius + pad_h + 1]
    x = F.conv2d(
        F.pad(x, (0, 0, pad_h, pad_h), mode="reflect"),
        k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return x.permute(0, 2, 3, 1)


def null_pixels(pixels: Pixels, kind: str = "gray", *, seed: int = 0) -> Pixels:
    """The null image for each image of (B, H, W, 3) in [0,1]; same shape, values in [0,1]."""
    if kind == "gray":
        return pixels.mean(dim=(1, 2, 3), keepdim=True).expand_as(pixels).clone()
    if kind == "noise":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.rand(pixels.shape, generator=generator, dtype=torch.float32).to(pixels)
    if kind == "blur":
        return _gaussian_blur(pixels, sigma=min(pixels.shape[1], pixels.shape[2]) / 8).clamp(0, 1)
    raise ValueError(f"unknown null image {kind!r}; expected one of {NULL_IMAGES}")


@torch.no_grad()
def compute_iig(
    adapter: VLMAdapter,
    pixels: Pixels,
    questions: Sequence[str],
    answers: Sequence[str],
    null_image: str = "gray",
    *,
    seed: int = 0,
) -> torch.Tensor:
    """IIG per sample, shape (B,), float32. `pixels` (B, H, W, 3) in [0,1].

    Real and null images go through one forward pass of batch 2B. An answer with no tokens has
    IIG 0 (nothing to explain)."""
    if not len(questions) == len(answers) == pixels.shape[0]:
        raise ValueError("pixels, questions and answers must have the same batch size")
    both = torch.cat([pixels, null_pixels(pixels, null_image, seed=seed)])
    logp, n_tokens = adapter.answer_logprobs(both, [*questions, *questions], [*answers, *answers])
    real, null = logp.float().chunk(2)
    return (real - null) / n_tokens[: len(questions)].clamp(min=1).float()
