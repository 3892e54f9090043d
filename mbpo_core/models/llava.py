"""LLaVA (LlavaForConditionalGeneration): CLIP-style shortest-edge resize, centre crop, (B, 3, H, W)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessorPil, LlavaProcessor

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import CLIP_MEAN, CLIP_STD, ModelSize, build_word_tokenizer
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


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# LLaVA-1.5 uses a CLIP ViT with 14 px patches; its processor needs the patch size to count image tokens.
LLAVA_PATCH = 14
LLAVA_SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "image": "<image>"}

# LLaVA-1.5's conversation format.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """Resize the shortest edge to `image_size` and centre-crop an `image_size` square (CLIP style);
    `max_image_size` does not apply."""
    tokenizer = build_word_tokenizer(words, LLAVA_SPECIAL, lowercase=lowercase)
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_config(processor: Any, s: ModelSize) -> Any:
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    image_size = processor.image_processor.crop_size["height"]
    # CLIP vision tower: needs neither torchvision nor the hub.
    vision = {
        "model_type": "clip_vision_model",
        **s.vision_fields(),
        "image_size": image_size,
        "patch_size": LLAVA_PATCH,
        "projection_dim": s.v_dim,
    }
    text = {
        "model_type": "llama",
        **s.text_fields(len(tokenizer)),
        "bos_token_id": ids(LLAVA_SPECIAL["bos"]),
        "eos_token_id": ids(LLAVA_SPECIAL["eos"]),
        "pad_token_id": ids(LLAVA_SPECIAL["pad"]),
    }
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids(LLAVA_SPECIAL["image"]),
        image_seq_length=(image_size // LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=s.tie_word_embeddings,
    )


ADAPTER = LlavaAdapter
