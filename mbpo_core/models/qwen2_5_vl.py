"""Qwen2.5-VL: the same processor contract as Qwen2-VL (windowed vision attention is inside the model)."""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration

from mbpo_core.models.processors import ImageOnlyQwen2_5_VLProcessor
from mbpo_core.models.qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = ImageOnlyQwen2_5_VLProcessor


ADAPTER = Qwen2_5_VLAdapter
