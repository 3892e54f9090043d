"""Qwen2.5-VL: the same processor contract as Qwen2-VL (windowed vision attention is inside the model)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import Qwen2_5_VLForConditionalGeneration

from mbpo_core.models import processors
from mbpo_core.models.build import ModelSize
from mbpo_core.models.qwen2_vl import Qwen2VLAdapter, qwen_config, qwen_processor


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = processors.Qwen2_5_VLProcessor


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    return qwen_processor(
        processors.Qwen2_5_VLProcessor,
        words,
        image_size=image_size,
        max_image_size=max_image_size,
        lowercase=lowercase,
    )


def tiny_config(processor: Any, size: ModelSize) -> Any:
    return qwen_config("qwen2_5_vl", processor.tokenizer, size)


ADAPTER = Qwen2_5_VLAdapter
