"""Qwen2-VL: dynamic resolution via smart_resize, flattened 14 px patches in 2x2 merge windows."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.preprocess import normalize, qwen_patchify, resize_bicubic, to_channels_first
from mbpo_core.models.processors import ImageOnlyQwen2VLProcessor


class Qwen2VLAdapter(VLMAdapter):
    family = "qwen2_vl"
    model_class: ClassVar[Any] = Qwen2VLForConditionalGeneration
    processor_class: ClassVar[Any] = ImageOnlyQwen2VLProcessor

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


ADAPTER = Qwen2VLAdapter
