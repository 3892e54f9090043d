"""The pure preprocessing functions against PIL and naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_core.models.preprocess import qwen_patchify, resize_bicubic


@pytest.mark.parametrize(
    ("src", "dst"), [((31, 47), (56, 28)), ((200, 90), (28, 84)), ((17, 17), (112, 112))]
)
def test_resize_is_bit_exact_with_pil_bicubic(src: tuple[int, int], dst: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(dst[::-1], Image.Resampling.BICUBIC))
    ours = resize_bicubic(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, *dst)
    assert np.array_equal((ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_resize_is_bit_exact_with_pil_for_random_size_changes() -> None:
    # Covers both pass orders newer Pillow releases choose between (see `pil_pass_order`).
    rng = np.random.default_rng(5)
    for _ in range(40):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(5, 90, 4))
        image = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BICUBIC))
        ours = resize_bicubic(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, out_h, out_w)
        assert np.array_equal((ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_resize_passes_gradient_where_not_saturated() -> None:
    images = torch.full((1, 3, 20, 30), 0.5, requires_grad=True)
    resize_bicubic(images, 28, 56).sum().backward()
    assert images.grad is not None
    # Each axis filter's rows sum to 1, so the total gradient is the output/input area ratio.
    assert float(images.grad.sum()) == pytest.approx(3 * 28 * 56, rel=1e-4)


def test_qwen_patchify_matches_naive_loop() -> None:
    patch, merge, temporal = 2, 2, 2
    images = torch.randn(2, 3, 8, 12)
    rows = []
    for b in range(2):
        for wy in range(8 // (patch * merge)):
            for wx in range(12 // (patch * merge)):
                for my in range(merge):
                    for mx in range(merge):
                        y, x = (wy * merge + my) * patch, (wx * merge + mx) * patch
                        tile = images[b, :, y : y + patch, x : x + patch]  # (C, p, p)
                        rows.append(torch.stack([tile] * temporal, dim=1).reshape(-1))
    assert torch.equal(qwen_patchify(images, patch, merge, temporal), torch.stack(rows))
