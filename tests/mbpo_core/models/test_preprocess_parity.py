"""The differentiable preprocessing equals the Hugging Face processor (docs/method.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_core.models.base import VLMAdapter
from tests.mbpo_core.models.conftest import FAMILIES, random_uint8, to_pixels

PARITY_TOL = 1e-5
# Raw sizes (H, W): unresized square, unresized non-square, upscaled non-square, downscaled.
UNRESIZED = [(56, 56), (56, 84)]
RESIZED = [(60, 90), (200, 150), (100, 70), (45, 45)]


def processor_pixels(adapter: VLMAdapter, image: np.ndarray) -> dict[str, torch.Tensor]:
    text = adapter.prompt_text("is there a red circle ?")
    out = adapter.processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
    return {k: out[k] for k in adapter.pixel_keys}


def max_diff(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == theirs.keys()
    for key in ours:
        if not ours[key].is_floating_point():
            assert torch.equal(ours[key], theirs[key]), key
    return float((ours["pixel_values"] - theirs["pixel_values"]).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", UNRESIZED)
def test_unresized_images_match_processor(
    adapters: dict[str, VLMAdapter], family: str, size: tuple[int, int]
) -> None:
    adapter = adapters[family]
    image = random_uint8(*size, seed=1)
    ours = adapter.pixel_inputs(to_pixels(image))
    assert max_diff(ours, processor_pixels(adapter, image)) <= PARITY_TOL


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", RESIZED)
@pytest.mark.parametrize("seed", [2, 3])
def test_resized_images_match_processor(
    adapters: dict[str, VLMAdapter], family: str, size: tuple[int, int], seed: int
) -> None:
    # Uniform noise is the hardest case for a resize: large bicubic overshoot, many rounding ties.
    adapter = adapters[family]
    image = random_uint8(*size, seed=seed)
    ours = adapter.pixel_inputs(to_pixels(image))
    assert max_diff(ours, processor_pixels(adapter, image)) <= PARITY_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_images_matches_processor(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    images = [random_uint8(56, 84, seed=s) for s in range(3)]
    text = [adapter.prompt_text("is there a red circle ?")] * 3
    # One image list per sample: every processor reads that as a batch (Gemma 3 reads a flat list
    # as one sample with three images).
    theirs = adapter.processor(text=text, images=[[Image.fromarray(i)] for i in images], return_tensors="pt")
    ours = adapter.pixel_inputs(to_pixels(*images))
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= PARITY_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_pixel_inputs_are_differentiable(adapters: dict[str, VLMAdapter], family: str) -> None:
    pixels = to_pixels(random_uint8(60, 90, seed=3)).requires_grad_(True)
    adapters[family].pixel_inputs(pixels)["pixel_values"].square().sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
