"""Differentiable re-implementations of the Hugging Face image processors (docs/method.md §2).

Every function maps float tensors to float tensors with autograd intact, so PGD can perturb the
image in [0,1] pixel space *before* the model's own resize / normalise / patchify. The parity tests
in tests/mbpo_core/models compare each family's composition against the HF processor.

Shapes: images enter as (B, H, W, 3) in [0,1] (the project's `Pixels`) and are moved to channels-
first (B, 3, H, W) once, which is what the processors and `F.interpolate` work in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image


def to_channels_first(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, 3, H, W)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected pixels of shape (B, H, W, 3), got {tuple(pixels.shape)}")
    return pixels.permute(0, 3, 1, 2)


# PIL's 8-bit resampling uses fixed-point filter coefficients with this many fractional bits.
_PIL_PRECISION_BITS = 32 - 8 - 2


# ---- PIL resampling on uint8, differentiable ------------------------------------------------------
#
# The HF *ImageProcessorPil classes resize the uint8 image with PIL, which filters along one axis,
# rounds to uint8, filters along the other and rounds again. `resize_pil` does the same two passes
# with PIL's own fixed-point coefficients in float64 (exact for integer inputs) and rounds with a
# straight-through estimator: the output equals the processor's for uint8-valued inputs and stays
# differentiable. BICUBIC (Qwen, LLaVA, InternVL, LLaVA-OneVision), BILINEAR (Gemma 3) and LANCZOS
# (Idefics3, SmolVLM) differ only in their kernel.


def _pil_cubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _pil_triangle(x: np.ndarray) -> np.ndarray:
    """PIL's bilinear (triangle) kernel."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _to_fixed_point(k: float | np.ndarray) -> float | np.ndarray:
    # C's (int) truncates toward zero after PIL adds +-0.5, i.e. rounds half away from zero.
    fixed = np.trunc(k * (1 << _PIL_PRECISION_BITS) + np.where(np.asarray(k) < 0, -0.5, 0.5))
    return fixed / (1 << _PIL_PRECISION_BITS)


def _pil_weights(
    kernel: Callable[[np.ndarray], np.ndarray], support: float, in_size: int, out_size: int
) -> np.ndarray:
    """(out_size, in_size) float64 matrix of PIL's resampling along one axis: PIL's support widening
    when downscaling (antialiasing), border renormalisation and 22-bit fixed-point coefficients, so
    `weights @ row` reproduces PIL's pre-rounding accumulator exactly."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = kernel((np.arange(lo, hi) - center + 0.5) / filterscale)
        if k.sum() != 0.0:
            k = k / k.sum()
        weights[out, lo:hi] = _to_fixed_point(k)
    return weights


@lru_cache(maxsize=64)
def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    return _pil_weights(_pil_cubic, 2.0, in_size, out_size)


@lru_cache(maxsize=64)
def pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    return _pil_weights(_pil_triangle, 1.0, in_size, out_size)


def _pil_sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * np.pi
    return float(np.sin(x)) / x


def _pil_lanczos(x: float) -> float:
    """PIL's LANCZOS kernel: sinc windowed by sinc(x / 3), support 3 (half-open, as in Resample.c)."""
    return _pil_sinc(x) * _pil_sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


@lru_cache(maxsize=64)
def pil_lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """As `_pil_weights`, but in the same order of scalar double operations as Pillow's
    `precompute_coeffs` (a sequential sum): LANCZOS coefficients sit on rounding ties otherwise."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ss = 1.0 / filterscale  # multiplied, not divided: Pillow's own floating-point steps
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = [_pil_lanczos((x - center + 0.5) * ss) for x in range(lo, hi)]
        total = 0.0
        for value in k:
            total += value
        for i, value in enumerate(k):
            v = value / total if total != 0.0 else value
            fixed = int(v * (1 << _PIL_PRECISION_BITS) + (-0.5 if v < 0 else 0.5))
            weights[out, lo + i] = fixed / (1 << _PIL_PRECISION_BITS)
    return weights


_WEIGHTS: dict[Image.Resampling, Callable[[int, int], np.ndarray]] = {
    Image.Resampling.BICUBIC: pil_bicubic_weights,
    Image.Resampling.BILINEAR: pil_bilinear_weights,
    Image.Resampling.LANCZOS: pil_lanczos_weights,
}


def _round_to_uint8_straight_through(values: torch.Tensor) -> torch.Tensor:
    """Forward: PIL's `clip8` (round half up, saturate to 0..255). Backward: the gradient of the
    saturation only, so PGD sees the resize as the linear filter it is between the roundings."""
    saturated = values.clamp(0.0, 255.0)
    return saturated + (torch.floor(values + 0.5).clamp(0.0, 255.0) - saturated).detach()


def _round_like_pil(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255)


@lru_cache(maxsize=256)
def pil_pass_order(
    in_h: int, in_w: int, out_h: int, out_w: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> tuple[str, str]:
    """The order of PIL's two resampling passes for this size change, read off the installed Pillow.

    The rounding between the passes makes the order visible in the output. Pillow up to 12 always
    filtered horizontally first; newer releases pick the order per size, by a rule not worth
    re-deriving, so one probe resize per size pair (cached) tells which order this Pillow uses.
    """
    if in_h == out_h or in_w == out_w:
        return ("horizontal", "vertical")
    probe = np.random.default_rng(0).integers(0, 256, (in_h, in_w), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(probe).resize((out_w, out_h), resample))
    weights = _WEIGHTS[resample]
    vertical_first = _round_like_pil(_round_like_pil(weights(in_h, out_h) @ probe) @ weights(in_w, out_w).T)
    return (
        ("vertical", "horizontal") if np.array_equal(vertical_first, expected) else ("horizontal", "vertical")
    )


def resize_pil(images: torch.Tensor, height: int, width: int, resample: Image.Resampling) -> torch.Tensor:
    """(B, 3, H, W) in [0,1] -> (B, 3, height, width) in [0,1], bit-exact with PIL's `resample`
    resize of the uint8 image (see the section comment)."""
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images
    values = images.double() * 255.0
    # k/255 in float32 comes back as k +- 1e-5, enough to flip PIL's round-half-up on an exact tie:
    # snap values that are uint8 up to float error (forward only; the gradient is untouched).
    nearest = torch.round(values)
    values = values + (torch.where((values - nearest).abs() < 1e-3, nearest, values) - values).detach()
    w = torch.from_numpy(_WEIGHTS[resample](in_w, width)).to(values.device)
    h = torch.from_numpy(_WEIGHTS[resample](in_h, height)).to(values.device)
    passes = {
        "horizontal": lambda v: _round_to_uint8_straight_through(v @ w.T) if in_w != width else v,
        "vertical": lambda v: _round_to_uint8_straight_through(h @ v) if in_h != height else v,
    }
    for axis in pil_pass_order(in_h, in_w, height, width, resample):
        values = passes[axis](values)
    return (values / 255.0).to(images.dtype)


def resize_bicubic(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return resize_pil(images, height, width, Image.Resampling.BICUBIC)


def resize_bilinear(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return resize_pil(images, height, width, Image.Resampling.BILINEAR)


def resize_lanczos(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return resize_pil(images, height, width, Image.Resampling.LANCZOS)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) in [0,1] -> (x - mean) / std per channel."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, height, width), the same offsets as transformers' `center_crop`."""
    h, w = images.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the image {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top : top + height, left : left + width]


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output size of a shortest-edge resize, rounding like transformers' `get_resize_output_image_size`."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def qwen_patchify(
    images: torch.Tensor, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B * gh * gw, C * temporal_patch_size * patch_size**2) Qwen patches.

    gh = H / patch_size, gw = W / patch_size. Rows are ordered image by image, then merge window by
    merge window (row-major), then the merge_size x merge_size patches inside a window, which is the
    order the vision merger groups them in. A still image is repeated on the temporal axis, as the
    processor does for a single frame.
    """
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    if gh * patch_size != h or gw * patch_size != w or gh % merge_size or gw % merge_size:
        raise ValueError(f"image {h}x{w} is not a multiple of patch_size * merge_size")
    x = images.reshape(
        b, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size
    )
    # -> (B, gh/m, gw/m, m, m, C, p, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(-3).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    return x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)
