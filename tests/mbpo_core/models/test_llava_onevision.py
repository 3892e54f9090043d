"""LLaVA-OneVision specifics: anyres tiling of wide and tall images, the token count (unpadding and the
anyres_max shrink) against the processor and the model, gradients through the tiles, an eps-ball
perturbation through the preprocessing, and a saved processor that names only stock classes.

Tiny model: 56 px tiles of 14 px patches (4 x 4 features each), pinpoints of whole tiles up to 112 px.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.models.auto.processing_auto import processor_class_from_name
from transformers.utils import is_torchvision_available

from mbpo_core.models import llava_onevision as ov
from mbpo_core.models.build import ModelSize, build_model, build_processor
from mbpo_core.models.loader import load_adapter
from mbpo_core.models.preprocess import pil_bicubic_weights
from tests.mbpo_core.models.conftest import IMAGE_SIZE, MAX_IMAGE_SIZE, WORDS, random_uint8, to_pixels

FAMILY = "llava_onevision"
QUESTION = "is there a red circle ?"
# (H, W): wide and tall, unresized inside their pinpoint, down- and upscaled, extreme aspect ratios.
SIZES = [(56, 56), (56, 84), (84, 56), (60, 90), (90, 60), (200, 150), (150, 200), (100, 70), (45, 45),
         (30, 200), (200, 30), (112, 112), (57, 113), (28, 28)]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def _save(processor, tmp: Path) -> Path:
    model = build_model(FAMILY, processor, "tiny", seed=0)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    processor = build_processor(FAMILY, WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE)
    return _save(processor, tmp_path_factory.mktemp("ov"))


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> ov.LlavaOnevisionAdapter:
    loaded = load_adapter(model_dir)
    assert isinstance(loaded, ov.LlavaOnevisionAdapter)
    return loaded


@pytest.fixture(scope="module")
def shrinking_adapter(tmp_path_factory: pytest.TempPathFactory) -> ov.LlavaOnevisionAdapter:
    """With "anyres_max_1", a grid of over about one tile of features is shrunk (bilinear, in the model)."""
    processor = build_processor(FAMILY, WORDS, image_size=IMAGE_SIZE, max_image_size=3 * IMAGE_SIZE)
    processor.vision_aspect_ratio = "anyres_max_1"
    loaded = load_adapter(_save(processor, tmp_path_factory.mktemp("ov-max1")))
    assert isinstance(loaded, ov.LlavaOnevisionAdapter)
    return loaded


def _processor_inputs(adapter: ov.LlavaOnevisionAdapter, image: np.ndarray, text: str | None = None):
    text = adapter.prompt_text(QUESTION) if text is None else text
    return adapter.processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")


def _model_feature_count(adapter: ov.LlavaOnevisionAdapter, height: int, width: int) -> int:
    """How many features the model itself packs for one image of this size."""
    inputs = adapter.pixel_inputs(to_pixels(random_uint8(height, width, seed=0)))
    with torch.no_grad():
        out = adapter.model.model.get_image_features(**inputs, return_dict=True)
    (features,) = out.pooler_output
    return int(features.shape[0])


def _offsets(adapter: ov.LlavaOnevisionAdapter, size: tuple[int, int]) -> tuple[int, int]:
    (target_h, target_w), (fitted_h, fitted_w) = adapter.best_resolution(*size), adapter.fitted_size(*size)
    return (target_h - fitted_h) // 2, (target_w - fitted_w) // 2


def _canvas(adapter: ov.LlavaOnevisionAdapter, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The padded pinpoint canvas (B, 3, H', W') the tiles (after the base tile) were cut from."""
    rows, cols = (side // adapter.tile for side in adapter.best_resolution(*size))
    tiles = values[:, 1:].reshape(values.shape[0], rows, cols, 3, adapter.tile, adapter.tile)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(
        values.shape[0], 3, rows * adapter.tile, cols * adapter.tile
    )


# ---- tiling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "pinpoint", "fitted"),
    [
        ((56, 200), (56, 112), (32, 112)),  # wide: one row of two tiles, black bands above and below
        ((200, 56), (112, 56), (112, 32)),  # tall: one column of two tiles, black bands left and right
    ],
)
def test_wide_and_tall_images_tile_like_the_processor(
    adapter: ov.LlavaOnevisionAdapter,
    size: tuple[int, int],
    pinpoint: tuple[int, int],
    fitted: tuple[int, int],
) -> None:
    image = random_uint8(*size, seed=4)
    assert adapter.best_resolution(*size) == pinpoint
    assert adapter.fitted_size(*size) == fitted
    ours = adapter.pixel_inputs(to_pixels(image))
    theirs = _processor_inputs(adapter, image)
    values = ours["pixel_values"]
    assert values.shape == theirs["pixel_values"].shape == (1, 3, 3, 56, 56)  # base + 2 tiles
    assert torch.equal(ours["image_sizes"], theirs["image_sizes"])
    assert ours["image_sizes"].tolist() == [list(size)]
    assert float((values - theirs["pixel_values"]).abs().max()) <= 1e-5
    # The padding is black: (0 - 0.5) / 0.5 = -1 after normalisation, 12 px on either side.
    pad = (pinpoint[0] - fitted[0]) // 2 if size[1] > size[0] else (pinpoint[1] - fitted[1]) // 2
    assert pad == 12
    tiles = values[0, 1:]
    band = tiles[..., :pad, :] if size[1] > size[0] else tiles[..., :, :pad]
    far_band = tiles[..., -pad:, :] if size[1] > size[0] else tiles[..., :, -pad:]
    assert torch.all(band == -1.0) and torch.all(far_band == -1.0)
    inner = tiles[..., pad:-pad, :] if size[1] > size[0] else tiles[..., :, pad:-pad]
    assert (inner != -1.0).float().mean() > 0.9
    # The image's token count: the processor's, and the model's own feature count.
    n_tokens = int((theirs["input_ids"] == adapter.image_token_id).sum())
    assert adapter.num_image_tokens(*size) == n_tokens == _model_feature_count(adapter, *size)
    assert adapter.prompt_ids(QUESTION, *size) == theirs["input_ids"][0].tolist()


def test_an_unresized_image_is_copied_into_its_tiles(adapter: ov.LlavaOnevisionAdapter) -> None:
    """56x84 fits the 56x112 pinpoint unresized: the tiles hold the raw pixels, centred (14 px black
    on the left and right), and the base tile is the whole image resized to 56x56."""
    image = random_uint8(56, 84, seed=2)
    values = adapter.pixel_inputs(to_pixels(image))["pixel_values"][0]
    canvas = torch.cat([values[1], values[2]], dim=-1) * 0.5 + 0.5  # undo the normalisation
    raw = to_pixels(image)[0].permute(2, 0, 1)
    assert torch.allclose(canvas[:, :, 14:98], raw, atol=1e-6)
    assert torch.all(canvas[:, :, :14] == 0) and torch.all(canvas[:, :, 98:] == 0)
    base = np.asarray(Image.fromarray(image).resize((56, 56), Image.Resampling.BICUBIC))
    assert torch.allclose(values[0] * 0.5 + 0.5, to_pixels(base)[0].permute(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_token_count_matches_processor_and_model(
    adapter: ov.LlavaOnevisionAdapter, size: tuple[int, int]
) -> None:
    image = random_uint8(*size, seed=1)
    theirs = _processor_inputs(adapter, image)
    ours = adapter.pixel_inputs(to_pixels(image))
    assert ours["pixel_values"].shape[1] == theirs["pixel_values"].shape[1] == adapter.num_tiles(*size)
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= 1e-5
    n_tokens = int((theirs["input_ids"] == adapter.image_token_id).sum())
    assert adapter.num_image_tokens(*size) == n_tokens == _model_feature_count(adapter, *size)


@pytest.mark.parametrize("size", [(168, 168), (168, 60), (60, 168), (150, 200), (112, 168)])
def test_token_count_with_the_anyres_max_shrink(
    shrinking_adapter: ov.LlavaOnevisionAdapter, size: tuple[int, int]
) -> None:
    adapter = shrinking_adapter
    image = random_uint8(*size, seed=1)
    theirs = _processor_inputs(adapter, image)
    n_tokens = int((theirs["input_ids"] == adapter.image_token_id).sum())
    assert adapter.num_image_tokens(*size) == n_tokens == _model_feature_count(adapter, *size)
    # The shrink did apply: fewer features than the unpadded grid of a 3x3-tile pinpoint would give.
    if size == (168, 168):
        assert n_tokens < 16 + 12 * 12 + 12
    assert adapter.prompt_ids(QUESTION, *size) == theirs["input_ids"][0].tolist()


@pytest.mark.parametrize("size", [(100, 40), (40, 100)])
def test_logprobs_on_tall_and_wide_images_match_the_model(
    adapter: ov.LlavaOnevisionAdapter, size: tuple[int, int]
) -> None:
    image = random_uint8(*size, seed=8)
    answer = "a red circle"
    inputs = _processor_inputs(adapter, image, adapter.prompt_text(QUESTION) + answer)
    with torch.no_grad():
        logits = adapter.model(**inputs).logits[0].float()
        ours, lengths = adapter.answer_logprobs(to_pixels(image), [QUESTION], [answer])
    n = int(lengths[0])
    ids = inputs["input_ids"][0]
    expected = torch.log_softmax(logits[-n - 1 : -1], dim=-1).gather(-1, ids[-n:, None]).sum()
    assert torch.allclose(ours, expected.unsqueeze(0), atol=1e-4)


# ---- gradients and perturbations -------------------------------------------------------------------


def test_gradients_reach_every_pixel_through_the_tiles(adapter: ov.LlavaOnevisionAdapter) -> None:
    # Unresized inside its pinpoint: the tiles are a copy, so d(sum of tiles)/d(pixel) = 1/std = 2.
    pixels = to_pixels(random_uint8(56, 84, seed=3)).requires_grad_(True)
    (grad,) = torch.autograd.grad(adapter.pixel_inputs(pixels)["pixel_values"][:, 1:].sum(), pixels)
    assert torch.allclose(grad, torch.full_like(grad, 2.0))
    # Resized (upscaled into 112x112): every pixel still reaches the tiles, and the base tile.
    pixels = to_pixels(random_uint8(60, 90, seed=3)).requires_grad_(True)
    values = adapter.pixel_inputs(pixels)["pixel_values"]
    weights = torch.rand_like(values)
    (tiles_grad,) = torch.autograd.grad((values[:, 1:] * weights[:, 1:]).sum(), pixels, retain_graph=True)
    (base_grad,) = torch.autograd.grad((values[:, :1] * weights[:, :1]).sum(), pixels)
    assert (tiles_grad.abs() > 0).all()
    assert (base_grad.abs().sum(-1) > 0).float().mean() > 0.9


def _resize_bound(size: tuple[int, int], out: tuple[int, int], eps: float) -> float:
    """How far a bicubic resize can move a pixel when its input moves by at most eps: the filter's
    largest absolute row sum per axis (bicubic overshoots: > 1), plus PIL's rounding to uint8 after
    each pass (half a level each, for the clean and the perturbed image)."""
    rows = [
        np.abs(pil_bicubic_weights(n, m)).sum(1).max() if n != m else 1.0
        for n, m in zip(size, out, strict=True)
    ]
    gain_h, gain_w = rows
    return gain_h * gain_w * eps + (gain_h + 1) / 255


@pytest.mark.parametrize("size", [(56, 84), (60, 90), (84, 56), (200, 150)])
def test_an_eps_perturbation_stays_in_the_ball_after_normalisation(
    adapter: ov.LlavaOnevisionAdapter, size: tuple[int, int]
) -> None:
    eps = 8 / 255
    std = 0.5
    clean = to_pixels(random_uint8(*size, seed=5))
    signs = torch.from_numpy(np.random.default_rng(6).choice([-1.0, 1.0], size=clean.shape)).float()
    perturbed = (clean + eps * signs).clamp(0, 1)
    # Keep the perturbed image on the uint8 grid, as a saved PNG is (what the processor sees).
    perturbed = torch.round(perturbed * 255) / 255
    assert (perturbed - clean).abs().max() <= eps + 1e-6
    ours, theirs = (
        adapter.pixel_inputs(clean)["pixel_values"],
        adapter.pixel_inputs(perturbed)["pixel_values"],
    )
    delta = (theirs - ours).abs()
    fitted = adapter.fitted_size(*size)
    if fitted == size:  # unresized tiles: a copy, so exactly within eps / std
        assert delta[:, 1:].max() <= eps / std + 1e-5
    else:
        assert delta[:, 1:].max() <= _resize_bound(size, fitted, eps) / std + 1e-5
    assert delta[:, 0].max() <= _resize_bound(size, (adapter.tile, adapter.tile), eps) / std + 1e-5
    # The black padding around the fitted image never moves.
    pad = torch.ones_like(_canvas(adapter, ours, size), dtype=torch.bool)
    (top, left), (fitted_h, fitted_w) = _offsets(adapter, size), adapter.fitted_size(*size)
    pad[..., top : top + fitted_h, left : left + fitted_w] = False
    for values in (ours, theirs):
        assert torch.all(_canvas(adapter, values, size)[pad] == -1.0)
    processor = adapter.processor(
        text=[adapter.prompt_text(QUESTION)],
        images=[Image.fromarray((perturbed[0].numpy() * 255).round().astype(np.uint8))],
        return_tensors="pt",
    )
    assert float((theirs - processor["pixel_values"]).abs().max()) <= 1e-5


# ---- processor ---------------------------------------------------------------------------------------


def test_saved_processor_names_stock_classes(model_dir: Path, adapter: ov.LlavaOnevisionAdapter) -> None:
    config = json.loads((model_dir / "processor_config.json").read_text())
    assert config["processor_class"] == "LlavaOnevisionProcessor"
    assert config["image_processor"]["image_processor_type"] == "LlavaOnevisionImageProcessor"
    assert config["video_processor"]["video_processor_type"] == "LlavaOnevisionVideoProcessor"
    for name in ("LlavaOnevisionProcessor", "LlavaOnevisionImageProcessor", "LlavaOnevisionVideoProcessor"):
        assert hasattr(transformers, name)
    # AutoProcessor resolves the saved name to the stock class, of which ours is an image-only subclass.
    assert processor_class_from_name(config["processor_class"]) is transformers.LlavaOnevisionProcessor
    assert issubclass(type(adapter.processor), transformers.LlavaOnevisionProcessor)
    assert type(adapter.processor.image_processor) is transformers.LlavaOnevisionImageProcessorPil
    # The settings the token count depends on survive the round trip.
    saved = adapter.processor
    assert saved.num_image_tokens == 16 and saved.vision_feature_select_strategy == "full"
    assert saved.vision_aspect_ratio == "anyres_max_9"
    assert saved.image_processor.image_grid_pinpoints == [[56, 56], [56, 112], [112, 56], [112, 112]]
    model_config = json.loads((model_dir / "config.json").read_text())
    assert model_config["model_type"] == FAMILY
    assert model_config["image_grid_pinpoints"] == saved.image_processor.image_grid_pinpoints
    assert model_config["vision_aspect_ratio"] == saved.vision_aspect_ratio


@pytest.mark.skipif(not is_torchvision_available(), reason="the stock processor needs torchvision (video)")
def test_stock_auto_processor_loads_the_saved_directory(model_dir: Path) -> None:
    processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    assert type(processor) is transformers.LlavaOnevisionProcessor


def test_batch_num_images_is_dropped_only_for_single_images(adapter: ov.LlavaOnevisionAdapter) -> None:
    image = Image.fromarray(random_uint8(56, 84, seed=0))
    single = adapter.processor(text=[adapter.prompt_text(QUESTION)], images=[image], return_tensors="pt")
    assert "batch_num_images" not in single
    two = adapter.prompt_text(QUESTION).replace("<image>", "<image> <image>")
    multi = adapter.processor(text=[two], images=[[image, image]], return_tensors="pt")
    assert multi["batch_num_images"].tolist() == [2]


def test_a_torchvision_image_processor_is_replaced_by_the_pil_one(adapter: ov.LlavaOnevisionAdapter) -> None:
    ip = adapter.processor.image_processor
    stand_in = SimpleNamespace(
        to_dict=lambda: {**ip.to_dict(), "image_processor_type": "LlavaOnevisionImageProcessor"}
    )
    pil = ov._pil_image_processor(stand_in)
    assert type(pil) is transformers.LlavaOnevisionImageProcessorPil
    assert pil.to_dict() == ip.to_dict()


def test_tiny_processor_pinpoints_and_config() -> None:
    assert ov.grid_pinpoints(28, 56) == [[28, 28], [28, 56], [56, 28], [56, 56]]
    processor = build_processor(FAMILY, WORDS, image_size=28, max_image_size=56)
    assert processor.num_image_tokens == 4
    config = ov.tiny_config(processor, ModelSize())
    ids = processor.tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<image>") and config.video_token_id == ids("<video>")
    assert config.vision_config.image_size == 28 and config.vision_config.patch_size == 14
    assert config.text_config.eos_token_id == ids("<|im_end|>")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_processor(FAMILY, WORDS, image_size=50)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n"
