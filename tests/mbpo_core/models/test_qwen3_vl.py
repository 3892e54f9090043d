"""What is specific to Qwen3-VL and Qwen3-VL-MoE (the generic adapter and parity tests cover the rest):
16 px patches with smart_resize to multiples of 32 and mean/std 0.5, a saved processor naming stock
classes, a released checkpoint's processor layout loading with the PIL image processor, the MoE
variant, and the thinking block stripped from generated answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from PIL import Image

from mbpo_core.models import qwen3_vl
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_model
from mbpo_core.models.info import inspect_model_dir
from mbpo_core.models.qwen3_vl import Qwen3VLAdapter, deepstack_indexes, strip_thinking
from mbpo_core.models.qwen3_vl_moe import Qwen3VLMoeAdapter
from tests.mbpo_core.models.conftest import IMAGE_SIZE, MAX_IMAGE_SIZE, WORDS, random_uint8, to_pixels

QWEN3 = ["qwen3_vl", "qwen3_vl_moe"]


@pytest.mark.parametrize(
    ("text", "opened", "answer"),
    [
        ("yes", False, "yes"),
        ("  Yes. ", False, "Yes."),
        ("<think> the circle is red </think> yes", False, "yes"),
        ("<think>\nred, so...\n</think>\n\nyes", False, "yes"),
        ("the circle is red </think>\n\nno", True, "no"),  # the prompt opened the block
        ("the circle is red </think>\n\nno", False, "no"),
        ("a first </think> then </think> (B)", False, "(B)"),  # the last closing tag ends the reasoning
        ("the circle is red and", True, ""),  # cut off before the answer: no answer
        ("yes <think> but", False, "yes"),
        ("<think> never closed", False, ""),
        ("", True, ""),
    ],
)
def test_strip_thinking(text: str, opened: bool, answer: str) -> None:
    assert strip_thinking(text, opened=opened) == answer


@pytest.mark.parametrize("family", QWEN3)
def test_patches_of_16_resized_to_multiples_of_32_with_mean_std_half(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    adapter = adapters[family]
    assert isinstance(adapter, Qwen3VLAdapter)
    ip = adapter.processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (16, 2, 2)
    assert list(ip.image_mean) == list(ip.image_std) == [0.5, 0.5, 0.5]
    assert isinstance(ip, transformers.Qwen2VLImageProcessorPil)
    # 56x84 rounds to 64x96: a 4x6 patch grid, 6 merged image tokens, rows of 3 * 2 * 16 * 16.
    out = adapter.pixel_inputs(to_pixels(random_uint8(56, 84, seed=0)))
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert tuple(out["pixel_values"].shape) == (24, 3 * 2 * 16 * 16)
    assert adapter.num_image_tokens(56, 84) == 6
    assert adapter.resized_size(64, 96) == (64, 96)  # multiples of 32 within the bounds: unresized


@pytest.mark.parametrize("family", QWEN3)
def test_a_pgd_step_stays_within_eps_over_std_after_normalisation(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    adapter = adapters[family]
    eps = 8 / 255
    clean = to_pixels(random_uint8(64, 96, seed=4))  # passes unresized
    sign = torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)))
    perturbed = (clean + eps * sign).clamp(0, 1)
    diff = adapter.pixel_inputs(perturbed)["pixel_values"] - adapter.pixel_inputs(clean)["pixel_values"]
    assert float(diff.abs().max()) <= eps / 0.5 + 1e-5
    assert float(diff.abs().max()) > eps  # the perturbation reaches the model's input


@pytest.mark.parametrize("family", QWEN3)
def test_saved_processor_names_stock_classes(model_dirs: dict[str, Path], family: str) -> None:
    data = json.loads((model_dirs[family] / "processor_config.json").read_text())
    assert data["processor_class"] == "Qwen3VLProcessor"
    assert data["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert issubclass(qwen3_vl.Qwen3VLProcessor, transformers.Qwen3VLProcessor)
    assert json.loads((model_dirs[family] / "config.json").read_text())["model_type"] == family


def test_a_released_checkpoints_processor_files_load_with_the_pil_image_processor(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Released checkpoints name the torchvision image processor and carry a video processor config;
    without torchvision the image-only processor loads them with the PIL image processor."""
    for item in model_dirs["qwen3_vl"].iterdir():
        if item.name != "processor_config.json":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3}
    common |= {"image_std": [0.5] * 3, "processor_class": "Qwen3VLProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            common
            | {"size": {"longest_edge": 16777216, "shortest_edge": 65536}}
            | {"image_processor_type": "Qwen2VLImageProcessorFast"}
        )
    )
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps(common | {"video_processor_type": "Qwen3VLVideoProcessor", "fps": 2})
    )
    adapter = Qwen3VLAdapter.load(tmp_path)
    assert isinstance(adapter, Qwen3VLAdapter)
    assert isinstance(adapter.processor.image_processor, transformers.Qwen2VLImageProcessorPil)
    # min_pixels 65536: a 56x84 image is upscaled to 224x320 (14 x 20 patches, 70 image tokens).
    assert adapter.resized_size(56, 84) == (224, 320)
    assert adapter.num_image_tokens(56, 84) == 70
    image = random_uint8(56, 84, seed=1)
    theirs = adapter.processor(
        text=[adapter.prompt_text("is there a red circle ?")],
        images=[Image.fromarray(image)],
        return_tensors="pt",
    )
    ours = adapter.pixel_inputs(to_pixels(image))
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()) <= 1e-5
    assert adapter.prompt_ids("is there a red circle ?", 56, 84) == theirs["input_ids"][0].tolist()


def test_the_moe_variant_loads_with_its_own_model_class(
    adapters: dict[str, VLMAdapter], model_dirs: dict[str, Path]
) -> None:
    info = inspect_model_dir(model_dirs["qwen3_vl_moe"])
    assert (info.family, info.model_type) == ("qwen3_vl_moe", "qwen3_vl_moe")
    assert info.architectures == ["Qwen3VLMoeForConditionalGeneration"]
    adapter = adapters["qwen3_vl_moe"]
    assert type(adapter) is Qwen3VLMoeAdapter
    assert isinstance(adapter.model, transformers.Qwen3VLMoeForConditionalGeneration)
    text_config = adapter.model.config.text_config
    assert isinstance(text_config, transformers.Qwen3VLMoeTextConfig) and text_config.num_experts == 4
    assert type(adapters["qwen3_vl"].model) is transformers.Qwen3VLForConditionalGeneration


def test_deepstack_layers_follow_the_released_models() -> None:
    assert deepstack_indexes(24) == [5, 11, 17]
    assert deepstack_indexes(1) == [0]


def _fixed_generate(adapter: VLMAdapter, completion: str) -> None:
    """Make the model 'generate' `completion` after any prompt (random weights never say it)."""
    ids = adapter.tokenizer(completion, add_special_tokens=False)["input_ids"]

    def generate(*, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tail = torch.tensor(ids, dtype=input_ids.dtype).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail], dim=1)

    adapter.model.generate = generate  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def thinking_adapter() -> Qwen3VLAdapter:
    processor = qwen3_vl.tiny_processor(
        WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE, lowercase=True, thinking=True
    )
    return Qwen3VLAdapter(build_model("qwen3_vl", processor, "tiny", seed=0), processor)


def test_a_thinking_prompt_opens_the_block(
    thinking_adapter: Qwen3VLAdapter, adapters: dict[str, VLMAdapter]
) -> None:
    assert thinking_adapter.prompt_text("is there a red circle ?").endswith(
        "<|im_start|>assistant\n<think>\n"
    )
    assert thinking_adapter.opens_thinking
    instruct = adapters["qwen3_vl"]
    assert isinstance(instruct, Qwen3VLAdapter) and not instruct.opens_thinking


def test_generation_strips_the_thinking_block(thinking_adapter: Qwen3VLAdapter) -> None:
    pixels = to_pixels(random_uint8(56, 84, seed=0), random_uint8(56, 84, seed=1))
    questions = ["is there a red circle ?"] * 2
    _fixed_generate(thinking_adapter, "a red circle </think> yes")
    assert thinking_adapter.generate(pixels, questions) == ["yes", "yes"]
    _fixed_generate(thinking_adapter, "a red circle is")  # reasoning cut off by max_new_tokens
    assert thinking_adapter.generate(pixels, questions) == ["", ""]


def test_an_instruct_model_that_thinks_anyway_is_stripped_too() -> None:
    processor = qwen3_vl.tiny_processor(
        WORDS, image_size=IMAGE_SIZE, max_image_size=MAX_IMAGE_SIZE, lowercase=True
    )
    adapter = Qwen3VLAdapter(build_model("qwen3_vl", processor, "tiny", seed=0), processor)
    pixels = to_pixels(random_uint8(56, 56, seed=0))
    _fixed_generate(adapter, "<think> red </think> no")
    assert adapter.generate(pixels, ["is there a red circle ?"]) == ["no"]
    _fixed_generate(adapter, "no")
    assert adapter.generate(pixels, ["is there a red circle ?"]) == ["no"]
