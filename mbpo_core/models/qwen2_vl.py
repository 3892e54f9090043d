"""Qwen2-VL: dynamic resolution via smart_resize, flattened 14 px patches in 2x2 merge windows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mbpo_core.models import processors
from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import CLIP_MEAN, CLIP_STD, ModelSize, build_word_tokenizer
from mbpo_core.models.preprocess import normalize, qwen_patchify, resize_bicubic, to_channels_first


class Qwen2VLAdapter(VLMAdapter):
    family = "qwen2_vl"
    model_class: ClassVar[Any] = Qwen2VLForConditionalGeneration
    processor_class: ClassVar[Any] = processors.Qwen2VLProcessor
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            # Pixels in [0,1] are uint8 / 255: any other rescale would need its own mapping.
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        self._ip = ip

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the processor resizes a raw image to (identity if do_resize is off)."""
        if not self._ip.do_resize:
            return height, width
        factor = self._ip.patch_size * self._ip.merge_size
        size = self._ip.size
        return smart_resize(
            height, width, factor, min_pixels=size.shortest_edge, max_pixels=size.longest_edge
        )

    def num_image_tokens(self, height: int, width: int) -> int:
        h, w = self.resized_size(height, width)
        return (h // self._ip.patch_size) * (w // self._ip.patch_size) // self._ip.merge_size**2

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B * gh * gw, 3 * 2 * 14 * 14), image_grid_thw (B, 3) = 1,gh,gw."""
        images = to_channels_first(pixels.float())
        height, width = self.resized_size(images.shape[-2], images.shape[-1])
        images = resize_bicubic(images, height, width)
        if self._ip.do_normalize:
            images = normalize(images, self._ip.image_mean, self._ip.image_std)
        patch = self._ip.patch_size
        pixel_values = qwen_patchify(images, patch, self._ip.merge_size, self._ip.temporal_patch_size)
        grid = torch.tensor([1, height // patch, width // patch], device=pixels.device)
        return {"pixel_values": pixel_values, "image_grid_thw": grid.repeat(images.shape[0], 1)}

    def text_kwargs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # M-RoPE needs to know which positions are image tokens (0 = text, 1 = image).
        return {"mm_token_type_ids": (input_ids == self.image_token_id).int()}


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

QWEN_SPECIAL = {
    "pad": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "vision_pad": "<|vision_pad|>",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
}

# Qwen2-VL's own template, minus the default system prompt (its words would bloat a word-level vocab).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_processor(
    cls: Any, words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """Qwen's processor of class `cls`: `min_pixels = image_size**2` and `max_pixels =
    max_image_size**2` (default: equal), so an `image_size` square (a multiple of 28) passes
    unresized while other sizes follow smart_resize."""
    if image_size % 28:
        raise ValueError("Qwen image_size must be a multiple of 28 (patch 14 x merge 2)")
    tokenizer = build_word_tokenizer(words, QWEN_SPECIAL, lowercase=lowercase)
    max_side = max_image_size or image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=image_size * image_size,
        max_pixels=max_side * max_side,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    return qwen_processor(
        processors.Qwen2VLProcessor,
        words,
        image_size=image_size,
        max_image_size=max_image_size,
        lowercase=lowercase,
    )


def tiny_config(processor: Any, size: ModelSize) -> Any:
    return qwen_config("qwen2_vl", processor.tokenizer, size)


def qwen_config(family: str, tokenizer: Any, s: ModelSize) -> Any:
    """A Qwen2-VL or Qwen2.5-VL config of shape `s` around `tokenizer`'s special tokens."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s.hidden // s.heads
    # M-RoPE splits the rotary half-dimension into (time, height, width) sections.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        **s.text_fields(len(tokenizer)),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": None,
        "eos_token_id": ids(QWEN_SPECIAL["im_end"]),
        "pad_token_id": ids(QWEN_SPECIAL["pad"]),
    }
    common = {
        "image_token_id": ids(QWEN_SPECIAL["image"]),
        "video_token_id": ids(QWEN_SPECIAL["video"]),
        "vision_start_token_id": ids(QWEN_SPECIAL["vision_start"]),
        "vision_end_token_id": ids(QWEN_SPECIAL["vision_end"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    if family == "qwen2_vl":
        vision = {
            "depth": s.v_depth,
            "embed_dim": s.v_dim,
            "hidden_size": s.hidden,
            "num_heads": s.v_heads,
            "mlp_ratio": 2,
        }
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    # Qwen2.5-VL: windowed attention in most vision blocks, full attention in the listed ones.
    vision_25: dict[str, Any] = {
        "depth": s.v_depth,
        "hidden_size": s.v_dim,
        "intermediate_size": 2 * s.v_dim,
        "num_heads": s.v_heads,
        "out_hidden_size": s.hidden,
        "window_size": s.window_size,
        "fullatt_block_indexes": list(s.fullatt_block_indexes or (s.v_depth - 1,)),
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision_25, **common)


ADAPTER = Qwen2VLAdapter
