"""Idefics3 and SmolVLM (which shares Idefics3's adapter): image splitting into a tile grid plus a
global image, its prompt layout, and gradients / perturbation bounds through the tiling.

Most of these build only a processor (the adapter's preprocessing and prompts need no model), so
they cost milliseconds; the shared parity and adapter tests cover the models themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, Idefics3ImageProcessorPil, Idefics3Processor

from mbpo_core.models import idefics3, smolvlm
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.preprocess import pil_lanczos_weights
from tests.mbpo_core.models.conftest import WORDS, random_uint8, to_pixels

FAMILIES = {"idefics3": idefics3, "smolvlm": smolvlm}
QUESTION = "is there a red circle ?"
TOL = 1e-5  # the shared parity tolerance; these sizes are bit-exact in practice


def adapter_for(
    family: str, image_size: int = 56, max_image_size: int | None = 168
) -> idefics3.Idefics3Adapter:
    """The family's adapter around a tiny processor, without a model (preprocessing and prompts only)."""
    module = FAMILIES[family]
    processor = module.tiny_processor(
        WORDS, image_size=image_size, max_image_size=max_image_size, lowercase=True
    )
    return module.ADAPTER(None, processor)


def processor_outputs(adapter: VLMAdapter, image: np.ndarray) -> dict:
    text = adapter.prompt_text(QUESTION)
    return adapter.processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")


def processor_grid(adapter: idefics3.Idefics3Adapter, image: np.ndarray) -> tuple[int, int]:
    out = adapter.processor.image_processor([[Image.fromarray(image)]], return_row_col_info=True)
    return out["rows"][0][0], out["cols"][0][0]


def assert_matches_processor(adapter: VLMAdapter, image: np.ndarray) -> dict:
    theirs = processor_outputs(adapter, image)
    ours = adapter.pixel_inputs(to_pixels(image))
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= TOL
    assert torch.equal(ours["pixel_attention_mask"], theirs["pixel_attention_mask"])
    assert adapter.prompt_ids(QUESTION, *image.shape[:2]) == theirs["input_ids"][0].tolist()
    return theirs


# ---- splitting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(
    ("size", "grid"),
    [((40, 200), (1, 3)), ((200, 40), (3, 1)), ((90, 120), (3, 3)), ((30, 30), (3, 3)), ((56, 170), (1, 3))],
    ids=["wide", "tall", "landscape", "small-upscaled", "wide-odd"],
)
def test_wide_and_tall_images_split_like_the_processor(
    family: str, size: tuple[int, int], grid: tuple[int, int]
) -> None:
    # Longest edge 168 px, 56 px tiles: a 5:1 image is one row (or column) of 3 tiles, then the global image.
    adapter = adapter_for(family)
    image = random_uint8(*size, seed=11)
    assert adapter.grid(*size) == processor_grid(adapter, image) == grid
    theirs = assert_matches_processor(adapter, image)
    rows, cols = grid
    assert theirs["pixel_values"].shape == (1, rows * cols + 1, 3, 56, 56)
    ids = theirs["input_ids"][0].tolist()
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids)
    assert ids.count(adapter.image_token_id) == adapter.num_image_tokens(*size) == 4 * (rows * cols + 1)
    tile_tokens = [t for t in tokens if t.startswith("<row_")]
    assert tile_tokens == [f"<row_{r}_col_{c}>" for r in range(1, rows + 1) for c in range(1, cols + 1)]
    assert tokens.count("<global-img>") == 1 and tokens.count("<fake_token_around_image>") == rows * cols + 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_an_image_within_one_tile_is_the_global_image_alone(family: str) -> None:
    adapter = adapter_for(family, image_size=56, max_image_size=56)
    for size in [(56, 56), (30, 45), (100, 70)]:
        image = random_uint8(*size, seed=12)
        assert adapter.grid(*size) == processor_grid(adapter, image) == (0, 0)
        theirs = assert_matches_processor(adapter, image)
        assert theirs["pixel_values"].shape == (1, 1, 3, 56, 56)
        assert (
            theirs["input_ids"][0].tolist().count(adapter.image_token_id)
            == adapter.num_image_tokens(*size)
            == 4
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_without_image_splitting_the_image_is_resized_to_one_tile(family: str) -> None:
    adapter = adapter_for(family)
    adapter.processor.image_processor.do_image_splitting = False
    image = random_uint8(40, 200, seed=13)
    assert adapter.grid(40, 200) == (0, 0)
    assert assert_matches_processor(adapter, image)["pixel_values"].shape == (1, 1, 3, 56, 56)


def test_grid_matches_the_processor_over_many_sizes() -> None:
    """The resize arithmetic (odd-side bump, int truncations, ceil to tiles) on assorted aspect ratios."""
    adapter = adapter_for("idefics3", image_size=28, max_image_size=140)
    rng = np.random.default_rng(0)
    for height, width in rng.integers(3, 160, size=(25, 2)):
        image = np.zeros((int(height), int(width), 3), dtype=np.uint8)
        assert adapter.grid(int(height), int(width)) == processor_grid(adapter, image), (height, width)


def test_the_real_checkpoints_geometry_matches_the_processor() -> None:
    """The stock defaults (longest edge 1456, 364 px tiles, LANCZOS, mean = std = 0.5): 3 x 4 tiles."""
    tiny = idefics3.tiny_processor(WORDS, image_size=56, max_image_size=112, lowercase=True)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(),
        tokenizer=tiny.tokenizer,
        image_seq_len=169,
        chat_template=tiny.chat_template,
    )
    adapter = idefics3.Idefics3Adapter(None, processor)
    image = random_uint8(300, 500, seed=14)
    assert adapter.grid(300, 500) == processor_grid(adapter, image) == (3, 4)
    assert assert_matches_processor(adapter, image)["pixel_values"].shape == (1, 13, 3, 364, 364)


# ---- gradients and perturbations ---------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_the_pixels_through_each_tile(family: str) -> None:
    adapter = adapter_for(family)
    pixels = to_pixels(random_uint8(40, 200, seed=15)).requires_grad_(True)
    values = adapter.pixel_inputs(pixels)["pixel_values"]  # (1, 3 tiles + global, 3, 56, 56)
    grads = [torch.autograd.grad(values[0, i].square().sum(), pixels, retain_graph=True)[0] for i in range(4)]
    columns = [g[0].abs().sum(dim=(0, 2)) for g in grads]  # gradient mass per raw pixel column
    # The tiles cover the left, middle and right thirds (plus the LANCZOS support); the global all of it.
    assert columns[0][:60].sum() > 0 and columns[0][80:].sum() == 0
    assert columns[1][70:130].sum() > 0 and columns[1][:50].sum() == 0 and columns[1][150:].sum() == 0
    assert columns[2][140:].sum() > 0 and columns[2][:120].sum() == 0
    assert bool((columns[3] > 0).all())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_pixel_perturbation_stays_bounded_after_normalisation(family: str) -> None:
    """A PGD step of eps in [0,1] pixels moves the normalised tiles by at most eps / std when the image
    needs no resize (tiles are crops); through the global image's LANCZOS downscale the bound widens
    by the kernel's overshoot (the L1 norm of its rows, > 1 for a windowed sinc) and one uint8
    rounding step per resize pass."""
    adapter = adapter_for(family, image_size=56, max_image_size=112)
    image = random_uint8(112, 112, seed=16)  # already tile-aligned: resized by nothing but the global view
    eps = 4 / 255
    delta = eps * torch.sign(torch.randn(1, 112, 112, 3, generator=torch.Generator().manual_seed(0)))
    base = to_pixels(image)
    clean = adapter.pixel_inputs(base)["pixel_values"]
    attacked = adapter.pixel_inputs((base + delta).clamp(0, 1))["pixel_values"]
    change = (attacked - clean).abs().amax(dim=(0, 2, 3, 4))  # per frame
    std = min(adapter.processor.image_processor.image_std)
    assert change.shape == (5,)
    assert bool((change[:4] <= eps / std + 1e-6).all())
    overshoot = float(np.abs(pil_lanczos_weights(112, 56)).sum(axis=1).max())
    global_bound = ((eps * 255 * overshoot + 1) * overshoot + 1) / 255 / std
    assert float(change[4]) <= global_bound + 1e-6


# ---- checkpoints ---------------------------------------------------------------------------------------


def test_idefics3_saves_a_directory_the_stock_auto_processor_loads(
    model_dirs: dict[str, Path], adapters: dict[str, VLMAdapter]
) -> None:
    processor = AutoProcessor.from_pretrained(model_dirs["idefics3"], local_files_only=True)
    assert type(processor) is transformers.Idefics3Processor
    assert processor.image_seq_len == adapters["idefics3"].processor.image_seq_len == 4
    image = random_uint8(60, 90, seed=17)
    ours = processor_outputs(adapters["idefics3"], image)
    text = adapters["idefics3"].prompt_text(QUESTION)
    stock = processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
    assert torch.equal(stock["input_ids"], ours["input_ids"])
    assert torch.equal(stock["pixel_values"], ours["pixel_values"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_model_config_wires_the_tiles(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    config = adapter.model.config
    assert config.model_type == family
    assert config.image_token_id == adapter.image_token_id
    assert config.vision_config.image_size == adapter.processor.image_processor.max_image_size["longest_edge"]
    tokens_per_tile = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert adapter.processor.image_seq_len == tokens_per_tile // config.scale_factor**2
    assert config.text_config.eos_token_id == adapter.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
