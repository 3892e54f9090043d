"""SmolVLM's image-only processor: what it saves names stock classes (including a stock video
processor config), it loads back, and it batches a flat list of images like Idefics3Processor.
Tiling, prompts and gradients are shared with Idefics3 (test_idefics3.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor

from mbpo_core.models import smolvlm
from mbpo_core.models.base import VLMAdapter
from tests.mbpo_core.models.conftest import random_uint8

QUESTION = "is there a red circle ?"
HAS_STOCK_DEPS = all(importlib.util.find_spec(m) is not None for m in ("torchvision", "num2words"))


def test_saved_processor_names_stock_classes(model_dirs: dict[str, Path]) -> None:
    saved = json.loads((model_dirs["smolvlm"] / "processor_config.json").read_text())
    assert saved["processor_class"] == "SmolVLMProcessor"
    assert saved["image_processor"]["image_processor_type"] == "SmolVLMImageProcessor"
    video = saved["video_processor"]
    assert video["video_processor_type"] == "SmolVLMVideoProcessor"
    for name in (saved["processor_class"], "SmolVLMImageProcessorPil", video["video_processor_type"]):
        assert hasattr(transformers, name)
    assert issubclass(smolvlm.SmolVLMProcessor, transformers.SmolVLMProcessor)
    # Frames are one global view each, at the tile size, with the image statistics.
    tile = saved["image_processor"]["max_image_size"]
    assert video["size"] == video["max_image_size"] == tile and not video["do_image_splitting"]
    assert video["image_mean"] == saved["image_processor"]["image_mean"]


@pytest.mark.skipif(HAS_STOCK_DEPS, reason="the stock processor is loadable here: the next test checks it")
def test_stock_auto_processor_only_lacks_torchvision(model_dirs: dict[str, Path]) -> None:
    # The config is found and names the stock video processor; only its torchvision import fails.
    with pytest.raises(ImportError, match=r"[Tt]orchvision"):
        AutoProcessor.from_pretrained(model_dirs["smolvlm"], local_files_only=True)


@pytest.mark.skipif(not HAS_STOCK_DEPS, reason="the stock SmolVLMProcessor needs torchvision and num2words")
def test_stock_auto_processor_loads_the_directory(model_dirs: dict[str, Path]) -> None:
    processor = AutoProcessor.from_pretrained(model_dirs["smolvlm"], local_files_only=True)
    assert type(processor) is transformers.SmolVLMProcessor


def test_processor_round_trips(model_dirs: dict[str, Path], adapters: dict[str, VLMAdapter]) -> None:
    loaded = smolvlm.SmolVLMProcessor.from_pretrained(model_dirs["smolvlm"], local_files_only=True)
    built = adapters["smolvlm"].processor
    assert not hasattr(loaded, "video_processor")
    assert loaded.image_seq_len == built.image_seq_len == 4
    assert loaded.image_processor.to_dict() == built.image_processor.to_dict()
    assert (
        loaded.chat_template
        == built.chat_template
        == transformers.models.smolvlm.processing_smolvlm.DEFAULT_CHAT_TEMPLATE
    )


def test_a_flat_list_of_images_batches_like_nested_lists(adapters: dict[str, VLMAdapter]) -> None:
    processor = adapters["smolvlm"].processor
    images = [Image.fromarray(random_uint8(40 + 20 * i, 90, seed=i)) for i in range(3)]
    text = [adapters["smolvlm"].prompt_text(QUESTION)] * 3
    flat = processor(text=text, images=images, return_tensors="pt", padding=True)
    nested = processor(text=text, images=[[i] for i in images], return_tensors="pt", padding=True)
    assert flat.keys() == nested.keys()
    for key in flat:
        assert torch.equal(flat[key], nested[key]), key


def test_chat_template_is_smolvlm2s(adapters: dict[str, VLMAdapter]) -> None:
    text = adapters["smolvlm"].prompt_text(QUESTION)
    assert text == f"<|im_start|>User:<image>{QUESTION}<end_of_utterance>\nAssistant:"
