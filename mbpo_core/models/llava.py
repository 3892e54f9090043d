"""LLaVA (LlavaForConditionalGeneration): CLIP-style shortest-edge resize, centre crop, (B, 3, H, W)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.preprocess import (
    center_crop,
    normalize,
    resize_bicubic,
    shortest_edge_size,
    to_channels_first,
)


class LlavaAdapter(VLMAdapter):
    family = "llava"
    model_class = LlavaForConditionalGeneration
    processor_class = LlavaProcessor

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        if ip.do_pad:
            # LLaVA-1.5's pad-to-square variant is not implemented; refuse rather than differ silently.
            raise ValueError("LLaVA image processors with do_pad=True are not supported")
        self._ip = ip

    def processed_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the processor outputs for a raw image of this size."""
        if self._ip.do_resize:
            height, width = shortest_edge_size(height, width, self._ip.size.shortest_edge)
        if self._ip.do_center_crop:
            height, width = self._ip.crop_size.height, self._ip.crop_size.width
        return height, width

    def num_image_tokens(self, height: int, width: int) -> int:
        h, w = self.processed_size(height, width)
        patch = self.processor.patch_size
        count = (h // patch) * (w // patch) + self.processor.num_additional_image_tokens
        # The "default" strategy drops the CLS feature that num_additional_image_tokens counted.
        return count - 1 if self.processor.vision_feature_select_strategy == "default" else count

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B, 3, crop_h, crop_w), normalised."""
        images = to_channels_first(pixels.float())
        if self._ip.do_resize:
            height, width = shortest_edge_size(
                images.shape[-2], images.shape[-1], self._ip.size.shortest_edge
            )
            images = resize_bicubic(images, height, width)
        if self._ip.do_center_crop:
            images = center_crop(images, self._ip.crop_size.height, self._ip.crop_size.width)
        if self._ip.do_normalize:
            images = normalize(images, self._ip.image_mean, self._ip.image_std)
        return {"pixel_values": images}


ADAPTER = LlavaAdapter
