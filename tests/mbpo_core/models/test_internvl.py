"""InternVL 3: dynamic tiling (grid choice, resize + crop order, thumbnail), the `<img>...</img>` prompt
expansion, gradients through the tiles, and a checkpoint naming only stock classes.

The tiny processor (conftest: image_size=56, max_image_size=112) tiles with 56 px tiles, at most 4
of them, plus a thumbnail whenever there is more than one tile; each tile is 4 `<IMG_CONTEXT>` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_processor
from mbpo_core.models.internvl import InternVLAdapter, InternVLProcessor
from mbpo_core.models.preprocess import pil_bicubic_weights
from tests.mbpo_core.models.conftest import IMAGE_SIZE, MAX_IMAGE_SIZE, WORDS, random_uint8, to_pixels

PARITY_TOL = 1e-5
QUESTION = "is there a red circle ?"
TILE = 56

# (H, W) -> (columns, rows) of the tile grid the processor picks (get_optimal_tiled_canvas, max 4 tiles).
GRIDS = {
    (56, 168): (3, 1),  # wide 1:3
    (168, 56): (1, 3),  # tall 3:1
    (56, 84): (2, 1),  # wide 2:3, resized to a 56x112 canvas
    (84, 56): (1, 2),  # tall 3:2
    (200, 150): (2, 2),  # tall 4:3: ties between 1x2 and 2x2, the bigger grid wins (large image)
    (30, 200): (4, 1),  # very wide
    (112, 112): (2, 2),  # square, large enough for 2x2: the canvas is the image itself (no resize)
    (45, 45): (1, 1),  # square, small: one tile, no thumbnail
}


@pytest.fixture(scope="module")
def adapter(adapters: dict[str, VLMAdapter]) -> InternVLAdapter:
    a = adapters["internvl"]
    assert isinstance(a, InternVLAdapter)
    return a


def processor_outputs(adapter: VLMAdapter, images: list[np.ndarray]) -> transformers.BatchFeature:
    text = [adapter.prompt_text(QUESTION)] * len(images)
    return adapter.processor(text=text, images=[Image.fromarray(i) for i in images], return_tensors="pt")


def test_tiny_processor_tiles_with_small_tiles(adapter: InternVLAdapter) -> None:
    ip = adapter.processor.image_processor
    assert type(ip) is transformers.GotOcr2ImageProcessorPil
    assert (ip.size["height"], ip.size["width"]) == (TILE, TILE) and ip.max_patches == 4
    assert adapter.crop_to_patches and adapter.image_seq_length == 4
    # One tile's features after the 2x2 pixel shuffle = image_seq_length tokens, as the model counts.
    assert adapter.model.config.image_seq_length == adapter.image_seq_length
    with torch.no_grad():
        features = adapter.model.get_image_features(
            adapter.pixel_inputs(to_pixels(random_uint8(56, 84, seed=0)))["pixel_values"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        ).pooler_output
    assert features.shape[:2] == (3, adapter.image_seq_length)


@pytest.mark.parametrize("size", list(GRIDS))
def test_grid_and_token_count_match_the_processor(adapter: InternVLAdapter, size: tuple[int, int]) -> None:
    cols, rows = GRIDS[size]
    assert adapter.tile_grid(*size) == (cols, rows)
    tiles = cols * rows + (1 if cols * rows > 1 else 0)
    assert adapter.num_tiles(*size) == tiles
    theirs = adapter.processor._get_num_multimodal_tokens(image_sizes=[size])
    assert theirs["num_image_patches"] == [tiles]
    assert theirs["num_image_tokens"] == [adapter.num_image_tokens(*size)] == [4 * tiles]


@pytest.mark.parametrize("size", [(56, 168), (168, 56), (200, 150), (30, 200), (112, 112)])
def test_wide_and_tall_batches_match_the_processor(adapter: InternVLAdapter, size: tuple[int, int]) -> None:
    # Our batches share H, W: three images of one raw size, each tiled on the same grid.
    images = [random_uint8(*size, seed=s) for s in range(3)]
    theirs = processor_outputs(adapter, images)
    ours = adapter.pixel_inputs(to_pixels(*images))
    assert ours.keys() == {"pixel_values"}
    assert (
        ours["pixel_values"].shape
        == theirs["pixel_values"].shape
        == (3 * adapter.num_tiles(*size), 3, 56, 56)
    )
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= PARITY_TOL
    # And each image of the batch equals that image alone (tiles stay grouped per image, in order).
    n = adapter.num_tiles(*size)
    for i, image in enumerate(images):
        alone = adapter.pixel_inputs(to_pixels(image))["pixel_values"]
        assert torch.equal(ours["pixel_values"][i * n : (i + 1) * n], alone)


def test_tiles_are_row_major_crops_of_the_canvas_then_the_thumbnail(adapter: InternVLAdapter) -> None:
    # 112x112 with 56 px tiles: the canvas is the image itself, so the tiles are exact crops.
    image = random_uint8(112, 112, seed=4)
    tiles = adapter.pixel_inputs(to_pixels(image))["pixel_values"]
    mean = torch.tensor(adapter.processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(adapter.processor.image_processor.image_std).view(3, 1, 1)
    pixels = tiles * std + mean  # back to [0, 1]
    chw = to_pixels(image)[0].permute(2, 0, 1)
    for k, (top, left) in enumerate([(0, 0), (0, 56), (56, 0), (56, 56)]):
        torch.testing.assert_close(pixels[k], chw[:, top : top + 56, left : left + 56], atol=1e-6, rtol=0)
    # The fifth is the thumbnail: the whole image resized (by PIL, as the processor does) to one tile.
    thumb = np.asarray(Image.fromarray(image).resize((56, 56), Image.Resampling.BICUBIC))
    torch.testing.assert_close(pixels[4], to_pixels(thumb)[0].permute(2, 0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(56, 168), (168, 56), (200, 150), (45, 45)])
def test_prompt_wraps_the_context_tokens_in_img_markers(
    adapter: InternVLAdapter, size: tuple[int, int]
) -> None:
    theirs = processor_outputs(adapter, [random_uint8(*size, seed=0)])["input_ids"][0].tolist()
    ours = adapter.prompt_ids(QUESTION, *size)
    assert ours == theirs
    tokens = adapter.tokenizer.convert_ids_to_tokens(ours)
    start, end = tokens.index("<img>"), tokens.index("</img>")
    assert tokens.count("<img>") == tokens.count("</img>") == 1
    assert tokens[start + 1 : end] == ["<IMG_CONTEXT>"] * adapter.num_image_tokens(*size)
    assert tokens.count("<IMG_CONTEXT>") == adapter.num_image_tokens(*size)
    assert tokens[:2] == ["<|im_start|>", "user"] and tokens[-2:] == ["<|im_start|>", "assistant"]


def test_gradients_reach_the_pixels_through_every_tile(adapter: InternVLAdapter) -> None:
    pixels = to_pixels(random_uint8(200, 150, seed=1)).requires_grad_(True)
    tiles = adapter.pixel_inputs(pixels)["pixel_values"]
    assert tiles.shape[0] == 5  # 2x2 grid + thumbnail
    grads = [
        torch.autograd.grad(tiles[k].sum(), pixels, retain_graph=True)[0][0].abs().sum(-1) for k in range(5)
    ]
    for k, grad in enumerate(grads):
        assert grad.sum() > 0, k
    # The top-left tile sees only the top-left of the image (bicubic support is local) ...
    assert grads[0][:90, :65].sum() > 0 and grads[0][110:, 85:].sum() == 0
    # ... the bottom-right tile only the bottom-right, and the thumbnail sees all four quarters.
    assert grads[3][110:, 85:].sum() > 0 and grads[3][:90, :65].sum() == 0
    assert all(
        grads[4][rows, cols].sum() > 0
        for rows in (slice(0, 100), slice(100, None))
        for cols in (slice(0, 75), slice(75, None))
    )


def _linf_gain(in_size: int, out_size: int) -> float:
    """Largest L1 norm of a row of PIL's bicubic matrix: how much one pass can amplify an L-inf change."""
    return 1.0 if in_size == out_size else float(np.abs(pil_bicubic_weights(in_size, out_size)).sum(1).max())


@pytest.mark.parametrize("size", [(112, 112), (200, 150), (56, 84)])
def test_pgd_perturbation_stays_within_eps_over_std(adapter: InternVLAdapter, size: tuple[int, int]) -> None:
    eps = 8 / 255
    clean = to_pixels(random_uint8(*size, seed=2))
    sign = torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)))
    perturbed = (clean + eps * sign).clamp(0, 1)
    delta = adapter.pixel_inputs(perturbed)["pixel_values"] - adapter.pixel_inputs(clean)["pixel_values"]
    std = torch.tensor(adapter.processor.image_processor.image_std).view(1, 3, 1, 1)
    moved = (delta.abs() * std).amax(dim=(1, 2, 3)) * 255  # per tile, back in uint8 steps
    cols, rows = adapter.tile_grid(*size)
    if (rows * TILE, cols * TILE) == size:
        # Grid tiles are exact crops of the image: within eps / std, exactly.
        assert float(moved[: rows * cols].max()) <= 8 + 1e-3
    # A resized tile: each PIL pass amplifies by its kernel's L1 norm and rounds to uint8 (+-1 step).
    for k, (out_h, out_w) in enumerate(
        [(rows * TILE, cols * TILE)] * (rows * cols) + [(TILE, TILE)] * (rows * cols > 1)
    ):
        gh, gw = _linf_gain(size[0], out_h), _linf_gain(size[1], out_w)
        bound = gh * gw * 8 + max(gh, gw) * (size[1] != out_w) + (size[0] != out_h)
        assert float(moved[k]) <= bound + 1e-3, (k, float(moved[k]), bound)
    assert float(moved.max()) > 0


@pytest.mark.parametrize("size", [(56, 84), (200, 150)])
def test_processor_default_tiles_even_when_the_image_processor_says_no(
    adapter: InternVLAdapter, size: tuple[int, int]
) -> None:
    # Real InternVL3-*-hf checkpoints save crop_to_patches=false in the image processor; the processor's
    # own call default (InternVLProcessor.images_kwargs) turns tiling on. The adapter follows the processor.
    processor = build_processor("internvl", WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE)
    processor.image_processor.crop_to_patches = False
    other = InternVLAdapter(adapter.model, processor)
    assert other.crop_to_patches and other.num_tiles(*size) > 1
    image = random_uint8(*size, seed=5)
    theirs = processor_outputs(other, [image])
    ours = other.pixel_inputs(to_pixels(image))["pixel_values"]
    assert ours.shape == theirs["pixel_values"].shape
    assert float((ours - theirs["pixel_values"]).abs().max()) <= PARITY_TOL
    assert other.prompt_ids(QUESTION, *size) == theirs["input_ids"][0].tolist()


@pytest.mark.parametrize("size", [(56, 84), (200, 150), (45, 45)])
def test_one_tile_processor_is_a_plain_resize(adapter: InternVLAdapter, size: tuple[int, int]) -> None:
    # max_image_size == image_size: max_patches 1, so no tiling and no thumbnail.
    processor = build_processor("internvl", WORDS, image_size=IMAGE_SIZE, max_image_size=IMAGE_SIZE)
    assert processor.image_processor.max_patches == 1
    other = InternVLAdapter(adapter.model, processor)
    image = random_uint8(*size, seed=6)
    theirs = processor_outputs(other, [image])
    ours = other.pixel_inputs(to_pixels(image))["pixel_values"]
    assert ours.shape == theirs["pixel_values"].shape == (1, 3, 56, 56)
    assert float((ours - theirs["pixel_values"]).abs().max()) <= PARITY_TOL
    assert other.prompt_ids(QUESTION, *size) == theirs["input_ids"][0].tolist()
    with torch.no_grad():
        logp, n = other.answer_logprobs(to_pixels(image), [QUESTION], ["yes"])
    assert n.tolist() == [1] and torch.isfinite(logp).all()


def test_image_size_must_be_a_multiple_of_28() -> None:
    with pytest.raises(ValueError, match="multiple of 28"):
        build_processor("internvl", WORDS, image_size=42, max_image_size=84)


def test_saved_checkpoint_names_stock_classes(model_dirs: dict[str, Path], adapter: InternVLAdapter) -> None:
    root = model_dirs["internvl"]
    processor_config = json.loads((root / "processor_config.json").read_text())
    tokenizer_config = json.loads((root / "tokenizer_config.json").read_text())
    config = json.loads((root / "config.json").read_text())
    assert config["model_type"] == "internvl"
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert processor_config["processor_class"] == tokenizer_config["processor_class"] == "InternVLProcessor"
    assert processor_config["image_processor"]["image_processor_type"] == "GotOcr2ImageProcessor"
    assert processor_config["image_seq_length"] == 4
    # The named tokens InternVLProcessor reads from the tokenizer, as in the real tokenizer_config.json.
    assert {
        k: tokenizer_config[k] for k in ("start_image_token", "end_image_token", "context_image_token")
    } == {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
    }
    for name in ("InternVLProcessor", "GotOcr2ImageProcessor", tokenizer_config["tokenizer_class"]):
        assert hasattr(transformers, name)
    # Here the adapter loads the stock class minus its torchvision video processor.
    assert issubclass(InternVLProcessor, transformers.InternVLProcessor)
    assert type(adapter.processor) is InternVLProcessor
    assert not hasattr(adapter.processor, "video_processor") or adapter.processor.video_processor is None


def test_serving_prompt_equals_the_adapters_prompt(adapter: InternVLAdapter) -> None:
    from mbpo_core.serving.engine import prompt_ids

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    image = to_pixels(random_uint8(56, 84, seed=0))[0]
    assert prompt_ids(adapter, messages, [image]) == adapter.prompt_ids(QUESTION, 56, 84)
