"""Adversarial image perturbation (docs/method.md §2) and its random-noise baseline.

    delta* = argmin_{||delta||_inf <= eps, 0 <= x + delta <= 1}  log pi_0(y_gt | x + delta, q)

solved by projected sign-gradient descent. Everything works in [0,1] pixel space on (B, H, W, 3)
batches of one image size; `bucket_by_size` groups a pool of differently sized images into such
batches. The log-prob comes in as a function, so the attack knows nothing about model families.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

# (B, H, W, 3) pixels in [0, 1] -> (B,) log-prob of each sample's ground-truth answer, differentiable.
# Samples must not interact (true of a VLM forward with per-sample attention masks): the gradient of
# the batch sum with respect to image i is then exactly the gradient of sample i's own log-prob.
LogprobFn = Callable[[torch.Tensor], torch.Tensor]


def project(pixels: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point to `pixels` in the L-inf ball of radius eps around `clean`, inside [0, 1]."""
    return torch.min(torch.max(pixels, clean - eps), clean + eps).clamp(0.0, 1.0)


def pgd_perturb(
    logprob_fn: LogprobFn,
    pixels: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(B, H, W, 3) clean pixels -> perturbed pixels that lower each sample's answer log-prob.

    x_{t+1} = Proj(x_t - step_size * sign(grad_x log p(y_gt | x_t))), x_0 = the clean image or, with
    `random_start`, a uniform point of the eps-ball (drawn from `generator` on the CPU so a seed
    gives the same start on any device). One forward + backward per step; model weights receive no
    gradient (only the pixels are differentiated). `should_stop` is asked before every step (a
    batch of a large model takes long); a yes raises `Interrupted`.
    """
    clean = pixels.detach()
    adv = clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        adv = project(clean + (2 * noise - 1) * eps, clean, eps)
    for _ in range(steps):
        interrupt_if(should_stop)
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(logprob_fn(adv).sum(), adv)
        adv = project(adv.detach() - step_size * grad.sign(), clean, eps)
    return adv.detach()


class Interrupted(Exception):
    """A stop was requested in the middle of a mining batch; what the batch computed is dropped."""


def interrupt_if(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted


def random_sign_noise(
    pixels: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The baseline of the same budget: every pixel channel moves by +eps or -eps with equal odds,
    clipped to [0, 1] (the paper's point: such noise rarely flips answers, PGD does)."""
    signs = torch.randint(0, 2, pixels.shape, generator=generator).to(pixels.device, pixels.dtype) * 2 - 1
    return (pixels.detach() + eps * signs).clamp(0.0, 1.0)


def quantize_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit PNG and reading back gives: values rounded to multiples of 1/255."""
    return torch.round(pixels.detach() * 255) / 255


def bucket_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of `sizes` ((H, W) per image) grouped into batches of one size, at most batch_size
    each; sizes appear in order of first occurrence and indices keep their order within a size."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, size in enumerate(sizes):
        by_size[size].append(index)
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
