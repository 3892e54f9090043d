"""Tiny random models of every family, built once per test session and saved like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mbpo_core.models import build
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.models.loader import load_adapter

FAMILIES = list(build.FAMILIES)  # every registered family (mbpo_core.models.info)
WORDS = [
    *["is", "there", "a", "red", "blue", "green", "circle", "square", "triangle", "in", "the", "image"],
    *["yes", "no", "how", "many", "what", "color", "of"],
]
# Qwen: 56 px squares pass unresized and anything up to 112x112 pixels keeps its size if a multiple of 28.
IMAGE_SIZE, MAX_IMAGE_SIZE = 56, 112


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for family in FAMILIES:
        processor = build_processor(family, WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE)
        model = build_model(family, processor, "tiny", seed=0)
        out = tmp_path_factory.mktemp(family)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        dirs[family] = out
    return dirs


@pytest.fixture(scope="session")
def adapters(model_dirs: dict[str, Path]) -> dict[str, VLMAdapter]:
    return {family: load_adapter(path) for family, path in model_dirs.items()}


def random_uint8(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def to_pixels(*images: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, H, W, 3) float in [0, 1], exactly what a PNG decodes to."""
    return torch.from_numpy(np.stack(images)).float() / 255
