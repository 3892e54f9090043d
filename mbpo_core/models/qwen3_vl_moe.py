"""Qwen3-VL-MoE: Qwen3-VL's processor and adapter; the text decoder's MLPs are mixtures of experts.

Its own module because the registry maps each model_type to the module holding its adapter, and a
checkpoint of `qwen3_vl_moe` loads with Qwen3VLMoeForConditionalGeneration. Its processor is the
stock Qwen3VLProcessor (transformers maps `qwen3_vl_moe` to it), the image-only subclass here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from transformers import Qwen3VLMoeForConditionalGeneration

from mbpo_core.models import qwen3_vl
from mbpo_core.models.build import ModelSize
from mbpo_core.models.qwen3_vl import Qwen3VLAdapter


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    family = "qwen3_vl_moe"
    model_class: ClassVar[Any] = Qwen3VLMoeForConditionalGeneration


def tiny_processor(
    words: Iterable[str],
    *,
    image_size: int,
    max_image_size: int | None,
    lowercase: bool,
    thinking: bool = False,
) -> Any:
    return qwen3_vl.tiny_processor(
        words, image_size=image_size, max_image_size=max_image_size, lowercase=lowercase, thinking=thinking
    )


def tiny_config(processor: Any, size: ModelSize) -> Any:
    """Four experts, two per token, each half the dense MLP's width."""
    return qwen3_vl.qwen3_config("qwen3_vl_moe", processor.tokenizer, size)


ADAPTER = Qwen3VLMoeAdapter
