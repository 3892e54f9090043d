"""Gemma 3 specifics: stock classes on disk, the `<start_of_image>` expansion and token types,
pan-and-scan (crop boxes, parity, prompts, log-probs, gradients), the PIL BILINEAR resize, PGD bounds.

The shared suites (test_adapters.py, test_preprocess_parity.py) cover the unresized / resized parity,
prompts, log-probs and generation without pan-and-scan. Hugging Face's Gemma3Processor takes a batch
of images only as one list per sample (a flat list is read as one sample with several images), so
batches here are passed nested.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Gemma3ImageProcessorPil

from mbpo_core.models import gemma3
from mbpo_core.models.build import SIZES, build_model
from mbpo_core.models.loader import load_adapter
from mbpo_core.models.preprocess import resize_bilinear
from tests.mbpo_core.models.conftest import IMAGE_SIZE, MAX_IMAGE_SIZE, WORDS, random_uint8, to_pixels

PARITY_TOL = 1e-5
QUESTION = "is there a red circle ?"
# Pan-and-scan at test scale: crops of at least 16 px, up to 4, once an image is 1.2x wider than tall.
PAS: dict[str, Any] = {"min_crop_size": 16, "max_num_crops": 4, "min_ratio_to_activate": 1.2}
WIDE, TALL = (40, 100), (150, 60)  # (H, W): 3 crops each, the last one cut at the border


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    processor = gemma3.tiny_processor(
        WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE, lowercase=True
    )
    model = build_model("gemma3", processor, "tiny", seed=0)
    gemma3.tiny_init(model)  # what build.build_model's post-build hook does
    out = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> gemma3.Gemma3Adapter:
    loaded = load_adapter(model_dir)
    assert isinstance(loaded, gemma3.Gemma3Adapter)
    return loaded


def with_pan_and_scan(adapter: gemma3.Gemma3Adapter, **settings: object) -> gemma3.Gemma3Adapter:
    """The same model behind a processor whose saved image-processor config turns pan-and-scan on."""
    processor = copy.deepcopy(adapter.processor)
    ip = processor.image_processor
    ip.do_pan_and_scan = True
    for key, value in {**PAS, **settings}.items():
        setattr(ip, f"pan_and_scan_{key}", value)
    return gemma3.Gemma3Adapter(adapter.model, processor)


@pytest.fixture(scope="module")
def pas_adapter(adapter: gemma3.Gemma3Adapter) -> gemma3.Gemma3Adapter:
    return with_pan_and_scan(adapter)


def run_processor(
    adapter: gemma3.Gemma3Adapter, images: list[np.ndarray], text: str = QUESTION, answer: str = ""
):
    prompt = adapter.prompt_text(text) + answer
    return adapter.processor(
        text=[prompt] * len(images),
        images=[[Image.fromarray(i)] for i in images],
        return_tensors="pt",
        **adapter.processor_kwargs,
    )


# ---- what is on disk -------------------------------------------------------------------------------


def test_saved_directory_names_only_stock_classes(model_dir: Path, adapter: gemma3.Gemma3Adapter) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3" and config["architectures"] == ["Gemma3ForConditionalGeneration"]
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    assert type(processor) is transformers.Gemma3Processor
    assert type(processor.image_processor) is Gemma3ImageProcessorPil
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    assert type(model) is gemma3.Gemma3Adapter.model_class is transformers.Gemma3ForConditionalGeneration
    # The tokenizer keeps the names the processor reads (boi / eoi / image soft token).
    tok = processor.tokenizer
    assert (tok.boi_token, tok.eoi_token, tok.image_token) == (
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    )
    assert adapter.image_token == "<start_of_image>" and adapter.soft_token == "<image_soft_token>"
    # The SigLIP grid pools to exactly the processor's soft tokens per image.
    patches = config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]
    assert config["mm_tokens_per_image"] == processor.image_seq_length == (patches // 2) ** 2


def test_tiny_init_randomises_the_projector_and_loading_keeps_it(model_dir: Path, adapter) -> None:
    processor = gemma3.tiny_processor(WORDS, image_size=IMAGE_SIZE, max_image_size=None, lowercase=True)
    fresh = build_model("gemma3", processor, "tiny", seed=0)
    gemma3.tiny_init(fresh)
    weight = fresh.model.multi_modal_projector.mm_input_projection_weight
    assert weight.abs().sum() > 0  # HF's init leaves it all zeros: images would not matter
    loaded = adapter.model.model.multi_modal_projector.mm_input_projection_weight
    assert torch.equal(loaded, weight)  # same seed, same weights; from_pretrained does not re-init


def test_tiny_processor_needs_a_multiple_of_28_and_pools_like_the_real_models() -> None:
    with pytest.raises(ValueError, match="multiple of 28"):
        gemma3.tiny_processor(WORDS, image_size=64, max_image_size=None, lowercase=True)
    real = gemma3.tiny_processor(WORDS, image_size=896, max_image_size=None, lowercase=True)
    assert real.image_seq_length == 256  # 64x64 SigLIP patches pooled 4x4, as in Gemma 3 4B-27B
    config = gemma3.tiny_config(real, SIZES["tiny"])
    assert config.mm_tokens_per_image == 256 and config.vision_config.image_size == 896


def test_unsupported_image_processors_are_refused(adapter: gemma3.Gemma3Adapter) -> None:
    processor = copy.deepcopy(adapter.processor)
    processor.image_processor.resample = 0  # NEAREST
    with pytest.raises(ValueError, match="resample"):
        gemma3.Gemma3Adapter(adapter.model, processor)
    processor = copy.deepcopy(adapter.processor)
    processor.image_processor.rescale_factor = 1 / 127.5
    with pytest.raises(ValueError, match="1/255"):
        gemma3.Gemma3Adapter(adapter.model, processor)


# ---- chat template and prompt expansion ---------------------------------------------------------


def test_chat_template_is_gemmas_turn_format(adapter: gemma3.Gemma3Adapter) -> None:
    assert adapter.prompt_text("is there a red circle ?") == (
        "<bos><start_of_turn>user\n<start_of_image>is there a red circle ?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    messages = [
        {"role": "system", "content": "yes"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " what color "}]},
        {"role": "assistant", "content": "red"},
    ]
    assert adapter.processor.apply_chat_template(messages, tokenize=False) == (
        "<bos><start_of_turn>user\nyes\n\n<start_of_image>what color<end_of_turn>\n"
        "<start_of_turn>model\nred<end_of_turn>\n"
    )


def test_image_expands_to_boi_soft_tokens_eoi_and_token_types_match(adapter: gemma3.Gemma3Adapter) -> None:
    image = random_uint8(60, 90, seed=0)
    theirs = run_processor(adapter, [image])
    ids = adapter.prompt_ids(QUESTION, 60, 90)
    assert ids == theirs["input_ids"][0].tolist()
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids)
    n = adapter.processor.image_seq_length
    start = tokens.index("<start_of_image>")
    assert tokens[start : start + n + 2] == [
        "<start_of_image>",
        *["<image_soft_token>"] * n,
        "<end_of_image>",
    ]
    assert adapter.num_image_tokens(60, 90) == n == tokens.count("<image_soft_token>")
    kwargs = adapter.text_kwargs(torch.tensor([ids]))
    assert torch.equal(kwargs["token_type_ids"], theirs["token_type_ids"])


def test_batch_of_images_matches_processor_when_nested(adapter: gemma3.Gemma3Adapter) -> None:
    images = [random_uint8(56, 84, seed=s) for s in range(3)]
    theirs = run_processor(adapter, images)
    ours = adapter.pixel_inputs(to_pixels(*images))
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape == (3, 3, 56, 56)
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= PARITY_TOL


# ---- the resize -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [((31, 47), (56, 28)), ((200, 90), (28, 84)), ((17, 17), (112, 112))]
)
def test_resize_bilinear_is_bit_exact_with_pil(src: tuple[int, int], dst: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(dst[::-1], Image.Resampling.BILINEAR))
    ours = resize_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, *dst)
    assert np.array_equal((ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_resize_bilinear_is_bit_exact_for_random_size_changes() -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(5, 90, 4))
        image = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
        ours = resize_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, out_h, out_w)
        assert np.array_equal((ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_bicubic_image_processors_are_reproduced_too(adapter: gemma3.Gemma3Adapter) -> None:
    processor = copy.deepcopy(adapter.processor)
    processor.image_processor.resample = 3  # BICUBIC
    bicubic = gemma3.Gemma3Adapter(adapter.model, processor)
    image = random_uint8(100, 70, seed=4)
    theirs = run_processor(bicubic, [image])["pixel_values"]
    assert float((bicubic.pixel_inputs(to_pixels(image))["pixel_values"] - theirs).abs().max()) <= PARITY_TOL


# ---- pan-and-scan -----------------------------------------------------------------------------------


def test_pan_and_scan_boxes_are_the_processors_crops() -> None:
    ip = Gemma3ImageProcessorPil()
    settings = gemma3.PanAndScan(min_crop_size=8, max_num_crops=3, min_ratio_to_activate=1.2)
    rng = np.random.default_rng(0)
    sizes = [(h, w) for h in range(8, 80, 7) for w in range(8, 80, 5)] + [WIDE, TALL]
    for h, w in sizes:
        image = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        try:
            boxes = gemma3.pan_and_scan_boxes(h, w, settings)
        except ValueError:  # an empty crop: HF hands PIL a zero-sized image
            crops = ip.pan_and_scan(image, 8, 3, 1.2)
            assert any(0 in c.shape for c in crops)
            continue
        crops = ip.pan_and_scan(image, 8, 3, 1.2)
        assert len(crops) == len(boxes), (h, w)
        for crop, (top, left, ch, cw) in zip(crops, boxes, strict=True):
            assert np.array_equal(crop, image[:, top : top + ch, left : left + cw]), (h, w)


def test_pan_and_scan_is_off_unless_configured(adapter, pas_adapter) -> None:
    assert adapter.pan_and_scan is None and adapter.processor_kwargs == {}
    assert adapter.crop_boxes(*WIDE) == []
    assert pas_adapter.pan_and_scan == gemma3.PanAndScan(**PAS)
    assert [b[2:] for b in pas_adapter.crop_boxes(*WIDE)] == [(40, 34), (40, 34), (40, 32)]
    assert [b[2:] for b in pas_adapter.crop_boxes(*TALL)] == [(50, 60)] * 3
    assert pas_adapter.crop_boxes(56, 60) == []  # ratio below 1.2: no crops


def test_pan_and_scan_survives_save_and_load(pas_adapter, model_dir: Path, tmp_path: Path) -> None:
    for item in model_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    pas_adapter.processor.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    assert isinstance(loaded, gemma3.Gemma3Adapter)
    assert loaded.pan_and_scan == pas_adapter.pan_and_scan


@pytest.mark.parametrize("size", [WIDE, TALL, (56, 84), (56, 56)])
def test_pan_and_scan_pixels_and_prompt_match_processor(pas_adapter, size: tuple[int, int]) -> None:
    images = [random_uint8(*size, seed=s) for s in range(2)]
    theirs = run_processor(pas_adapter, images)
    ours = pas_adapter.pixel_inputs(to_pixels(*images))["pixel_values"]
    crops = len(pas_adapter.crop_boxes(*size))
    assert ours.shape == theirs["pixel_values"].shape == (2 * (1 + crops), 3, 56, 56)
    assert float((ours - theirs["pixel_values"]).abs().max()) <= PARITY_TOL
    ids = pas_adapter.prompt_ids(QUESTION, *size)
    assert ids == theirs["input_ids"][0].tolist() == theirs["input_ids"][1].tolist()
    assert ids.count(pas_adapter.soft_token_id) == pas_adapter.num_image_tokens(*size)
    assert pas_adapter.num_image_tokens(*size) == (1 + crops) * pas_adapter.processor.image_seq_length
    assert torch.equal(
        pas_adapter.text_kwargs(torch.tensor([ids]))["token_type_ids"], theirs["token_type_ids"][:1]
    )
    if crops:
        assert "here are some crops to help you see better" in pas_adapter.tokenizer.decode(ids)


@pytest.mark.parametrize("size", [WIDE, TALL])
def test_pan_and_scan_logprobs_match_the_model_on_processor_inputs(
    pas_adapter: gemma3.Gemma3Adapter, size: tuple[int, int]
) -> None:
    images = [random_uint8(*size, seed=s) for s in range(2)]
    questions, answers = [QUESTION, "what color is the square ?"], ["yes", "a blue square"]
    with torch.no_grad():
        ours, lengths = pas_adapter.answer_logprobs(to_pixels(*images), questions, answers)
    expected = []
    for image, question, answer in zip(images, questions, answers, strict=True):
        inputs = run_processor(pas_adapter, [image], question, answer)
        with torch.no_grad():
            logits = pas_adapter.model(**inputs).logits[0].float()
        n = len(pas_adapter.answer_ids(answer))
        logprobs = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
        expected.append(float(logprobs.gather(-1, inputs["input_ids"][0, -n:].unsqueeze(-1)).sum()))
    assert lengths.tolist() == [1, 3]
    assert torch.allclose(ours, torch.tensor(expected), atol=1e-4)


def test_pan_and_scan_generation_matches_hf_generate(pas_adapter) -> None:
    image = random_uint8(*WIDE, seed=9)
    inputs = run_processor(pas_adapter, [image])
    out = pas_adapter.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = pas_adapter.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert pas_adapter.generate(to_pixels(image), [QUESTION], max_new_tokens=4) == [expected.strip()]


@pytest.mark.parametrize("size", [WIDE, TALL])
def test_gradients_reach_every_crop_region(pas_adapter, size: tuple[int, int]) -> None:
    pixels = to_pixels(random_uint8(*size, seed=3)).requires_grad_(True)
    crops_only = pas_adapter.pixel_inputs(pixels)["pixel_values"][1:]  # drop the full view
    (grad,) = torch.autograd.grad(crops_only.square().sum(), pixels)
    for top, left, h, w in pas_adapter.crop_boxes(*size):
        assert grad[0, top : top + h, left : left + w].abs().sum() > 0
    total, _ = pas_adapter.answer_logprobs(pixels, [QUESTION], ["yes"])
    (grad,) = torch.autograd.grad(total.sum(), pixels)
    assert grad.abs().sum() > 0


# ---- PGD in pixel space --------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "pan"), [((56, 56), False), ((60, 90), False), (WIDE, True), (TALL, True)])
def test_pgd_perturbation_stays_within_eps_over_std(
    adapter: gemma3.Gemma3Adapter, pas_adapter: gemma3.Gemma3Adapter, size: tuple[int, int], pan: bool
) -> None:
    """Normalised inputs move by at most eps / std: exactly for an unresized image; a resized one adds
    at most one uint8 level per PIL pass (the resize rounds to uint8 twice, BILINEAR weights are >= 0)."""
    chosen = pas_adapter if pan else adapter
    eps = 4 / 255
    pixels = to_pixels(random_uint8(*size, seed=1))
    sign = torch.from_numpy(np.random.default_rng(2).choice([-1.0, 1.0], size=pixels.shape)).float()
    adv = (pixels + eps * sign).clamp(0, 1)
    ours, theirs = chosen.pixel_inputs(pixels)["pixel_values"], chosen.pixel_inputs(adv)["pixel_values"]
    std = min(chosen.processor.image_processor.image_std)
    slack = 0.0 if size == (IMAGE_SIZE, IMAGE_SIZE) else 2 / 255
    assert float((theirs - ours).abs().max()) <= (eps + slack) / std + 1e-6
    assert float(theirs.abs().max()) <= 1.0 + 1e-6  # mean = std = 0.5 maps [0, 1] onto [-1, 1]
