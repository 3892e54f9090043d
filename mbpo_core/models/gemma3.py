"""Gemma 3 (Gemma3ForConditionalGeneration): fixed-square PIL resize, mean/std 0.5, optional pan-and-scan.

The processor resizes every image (and every pan-and-scan crop) to one `size` square with PIL
(BILINEAR in the real checkpoints), rescales by 1/255 and normalises with mean = std = 0.5. Its SigLIP
tower sees (image_size / patch)^2 patches, which the projector average-pools to `mm_tokens_per_image`
soft tokens. In the prompt the placeholder `<start_of_image>` (the processor's `image_token`) expands
into "\\n\\n<start_of_image>" + N x `<image_soft_token>` + "<end_of_image>\\n\\n", N = image_seq_length;
the model then needs `token_type_ids` (1 on the soft tokens) for its bidirectional attention over
each image block.

Pan-and-scan: Hugging Face's processor applies it only when called with `do_pan_and_scan=True` (its
own call defaults override the image processor's saved attributes). The adapter applies it when the
saved image processor says `do_pan_and_scan: true` (or `adapter.pan_and_scan` is set): the same crop
boxes of the raw image, each resized like the full image, and the same prompt text. `processor_kwargs`
gives the call kwargs that make the HF processor do the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
)
from transformers.image_utils import PILImageResampling

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import ModelSize, build_word_tokenizer
from mbpo_core.models.preprocess import normalize, resize_bicubic, resize_bilinear, to_channels_first

_RESIZERS = {
    int(PILImageResampling.BILINEAR): resize_bilinear,
    int(PILImageResampling.BICUBIC): resize_bicubic,
}


@dataclass(frozen=True)
class PanAndScan:
    """Gemma 3's pan-and-scan settings (Hugging Face's defaults: 256 px, 4 crops, ratio 1.2)."""

    min_crop_size: int = 256
    max_num_crops: int = 4
    min_ratio_to_activate: float = 1.2


def pan_and_scan_boxes(height: int, width: int, pas: PanAndScan) -> list[tuple[int, int, int, int]]:
    """(top, left, crop_h, crop_w) of each pan-and-scan crop of a raw height x width image, the boxes
    of `Gemma3ImageProcessorPil.pan_and_scan` (row-major; the last row / column is cut at the
    image's border as its numpy slicing does). No crops = []."""
    if width >= height:
        if width / height < pas.min_ratio_to_activate:
            return []
        num_w = math.floor(width / height + 0.5)
        num_w = min(math.floor(width / pas.min_crop_size), num_w)
        num_w = min(pas.max_num_crops, max(2, num_w))
        num_h = 1
    else:
        if height / width < pas.min_ratio_to_activate:
            return []
        num_h = math.floor(height / width + 0.5)
        num_h = min(math.floor(height / pas.min_crop_size), num_h)
        num_h = min(pas.max_num_crops, max(2, num_h))
        num_w = 1
    crop_w = math.ceil(width / num_w)
    crop_h = math.ceil(height / num_h)
    if min(crop_w, crop_h) < pas.min_crop_size:
        return []
    boxes = []
    for top, left in itertools.product(
        [crop_h * i for i in range(num_h)], [crop_w * i for i in range(num_w)]
    ):
        h, w = min(crop_h, height - top), min(crop_w, width - left)
        if h <= 0 or w <= 0:
            # The processor would hand PIL an empty crop and fail; say why instead.
            raise ValueError(f"pan-and-scan of a {height}x{width} image gives an empty crop")
        boxes.append((top, left, h, w))
    return boxes


class Gemma3Adapter(VLMAdapter):
    family = "gemma3"
    model_class: ClassVar[Any] = Gemma3ForConditionalGeneration
    processor_class: ClassVar[Any] = Gemma3Processor
    # `num_crops` is also computed, but the processor drops it from its outputs (unused_input_names).
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        if not isinstance(ip, Gemma3ImageProcessorPil):
            # The torchvision ("fast") backend resizes differently; pixel_inputs reproduces PIL only.
            raise ValueError(
                f"Gemma 3 needs the PIL image processor (Gemma3ImageProcessorPil), got {type(ip).__name__}"
            )
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        if ip.do_resize:
            if int(ip.resample) not in _RESIZERS:
                raise ValueError(f"Gemma 3 resample {ip.resample!r} is not supported (BILINEAR or BICUBIC)")
            if not (ip.size["height"] and ip.size["width"]):
                raise ValueError(f"Gemma 3 image processors resize to a fixed height x width, got {ip.size}")
        self._ip: Any = ip
        self._resize = _RESIZERS.get(int(ip.resample)) if ip.do_resize else None
        self.soft_token: str = self.tokenizer.image_token
        self.soft_token_id: int = self.tokenizer.convert_tokens_to_ids(self.soft_token)
        self.pan_and_scan: PanAndScan | None = None
        if ip.do_pan_and_scan:
            defaults = processor.images_kwargs
            self.pan_and_scan = PanAndScan(
                min_crop_size=ip.pan_and_scan_min_crop_size or defaults["pan_and_scan_min_crop_size"],
                max_num_crops=ip.pan_and_scan_max_num_crops or defaults["pan_and_scan_max_num_crops"],
                min_ratio_to_activate=ip.pan_and_scan_min_ratio_to_activate
                or defaults["pan_and_scan_min_ratio_to_activate"],
            )

    @property
    def processor_kwargs(self) -> dict[str, Any]:
        """Call kwargs that make the HF processor preprocess as this adapter does (pan-and-scan)."""
        if self.pan_and_scan is None:
            return {}
        return {
            "do_pan_and_scan": True,
            "pan_and_scan_min_crop_size": self.pan_and_scan.min_crop_size,
            "pan_and_scan_max_num_crops": self.pan_and_scan.max_num_crops,
            "pan_and_scan_min_ratio_to_activate": self.pan_and_scan.min_ratio_to_activate,
        }

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Pan-and-scan crops (top, left, h, w) of a raw image of this size; [] when it is off."""
        if self.pan_and_scan is None:
            return []
        return pan_and_scan_boxes(height, width, self.pan_and_scan)

    def image_sequence(self, height: int, width: int) -> str:
        """The text the processor puts in place of one `<start_of_image>` (its own `replace_image_token`):
        "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n", and with pan-and-scan crops the
        processor's "Here is the original image ... and here are some crops ..." wording."""
        return str(
            self.processor.replace_image_token({"num_crops": [len(self.crop_boxes(height, width))]}, 0)
        )

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image_soft_token>`s of one image: image_seq_length for the image and for each crop."""
        return self.processor.image_seq_length * (1 + len(self.crop_boxes(height, width)))

    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        if self._resize is None:
            return images
        return self._resize(images, self._ip.size["height"], self._ip.size["width"])

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B * (1 + crops), 3, S, S): per image the full image, then its
        pan-and-scan crops, the processor's order."""
        images = to_channels_first(pixels.float())
        height, width = int(images.shape[-2]), int(images.shape[-1])
        views = [self._resized(images)]
        for top, left, h, w in self.crop_boxes(height, width):
            views.append(self._resized(images[..., top : top + h, left : left + w]))
        if len({v.shape[-2:] for v in views}) != 1:
            raise ValueError("with do_resize off, pan-and-scan crops do not share one size")
        # (views, B, 3, S, S) -> (B, views, 3, S, S): image by image, the full view first.
        out = torch.stack(views, dim=1).flatten(0, 1)
        if self._ip.do_normalize:
            out = normalize(out, self._ip.image_mean, self._ip.image_std)
        return {"pixel_values": out}

    def text_kwargs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # Bidirectional attention inside each image block needs the soft tokens marked (1 = image).
        return {"token_type_ids": (input_ids == self.soft_token_id).long()}


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

GEMMA3_SPECIAL = {
    "pad": "<pad>",
    "eos": "<eos>",
    "bos": "<bos>",
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
    "boi": "<start_of_image>",
    "eoi": "<end_of_image>",
    "image": "<image_soft_token>",
}
# SigLIP's patch size. The projector average-pools the patch grid 2x2 (tiny models) or 4x4 (from
# 448 px on, as the real 896 px models do: 64x64 patches -> 256 soft tokens).
GEMMA3_PATCH = 14


def gemma3_pool(image_size: int) -> int:
    """The projector's pooling kernel for an `image_size` square (a multiple of 28)."""
    return 4 if image_size >= 448 and image_size % (GEMMA3_PATCH * 4) == 0 else 2


# The chat template's role word, and the words of the processor's pan-and-scan prompt.
GEMMA3_WORDS = [
    "model",
    *["here", "is", "the", "original", "image", "and", "are", "some", "crops"],
    *["to", "help", "you", "see", "better"],
]

# Gemma 3's own template (system turn folded into the first user turn), minus its error checks.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """Resize every image to an `image_size` square (a multiple of 28: 14 px patches, pooled by
    `gemma3_pool`; 56 px -> 4 soft tokens, 896 px -> 256); `max_image_size` does not apply.
    Pan-and-scan is off, as in the real checkpoints."""
    if image_size % (GEMMA3_PATCH * 2):
        raise ValueError("Gemma 3 image_size must be a multiple of 28 (patch 14 x pooling 2)")
    tokenizer = build_word_tokenizer([*GEMMA3_WORDS, *words], GEMMA3_SPECIAL, lowercase=lowercase)
    # The names Gemma3Processor reads off its tokenizer (saved in tokenizer_config.json).
    tokenizer._set_model_specific_special_tokens(
        {
            "boi_token": GEMMA3_SPECIAL["boi"],
            "eoi_token": GEMMA3_SPECIAL["eoi"],
            "image_token": GEMMA3_SPECIAL["image"],
        }
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    tokens_per_side = image_size // (GEMMA3_PATCH * gemma3_pool(image_size))
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_side**2,
    )


def tiny_config(processor: Any, s: ModelSize) -> Any:
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    image_size = processor.image_processor.size["height"]
    head_dim = s.hidden // s.heads
    vision = {
        "model_type": "siglip_vision_model",
        **s.vision_fields(),
        "image_size": image_size,
        "patch_size": GEMMA3_PATCH,
        "vision_use_head": False,
    }
    text = {
        "model_type": "gemma3_text",
        **s.text_fields(len(tokenizer)),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        # Gemma 3's 5 local : 1 global layer pattern, with the last layer always global.
        "layer_types": [
            "full_attention" if (i + 1) % 6 == 0 or i == s.layers - 1 else "sliding_attention"
            for i in range(s.layers)
        ],
        "sliding_window": 1024,
        "bos_token_id": ids(GEMMA3_SPECIAL["bos"]),
        "eos_token_id": ids(GEMMA3_SPECIAL["eos"]),
        "pad_token_id": ids(GEMMA3_SPECIAL["pad"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=processor.image_seq_length,
        boi_token_index=ids(GEMMA3_SPECIAL["boi"]),
        eoi_token_index=ids(GEMMA3_SPECIAL["eoi"]),
        image_token_index=ids(GEMMA3_SPECIAL["image"]),
        tie_word_embeddings=s.tie_word_embeddings,
    )


def tiny_init(model: Any) -> None:
    """Randomise the multimodal projector of a freshly built model (build.build_model's post-build hook).

    Hugging Face zero-initialises `mm_input_projection_weight`, so a random Gemma 3 straight from its
    config ignores its images: no image features, no gradient to the pixels. Real checkpoints load
    it, so this is for tiny random models only, drawn from the RNG build_model has just seeded.
    """
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, model.config.initializer_range)


ADAPTER = Gemma3Adapter
