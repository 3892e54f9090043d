"""LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): SigLIP tower, "anyres" tiling.

The image processor picks the best-fit resolution among `image_grid_pinpoints`, resizes the image
into it keeping the aspect ratio (PIL bicubic on the uint8 image), centres it on a black canvas of
that resolution, cuts the canvas into `size` x `size` tiles and puts the whole image, resized to one
tile, in front: pixel_values (B, 1 + n_tiles, 3, S, S) and image_sizes (B, 2) = the raw (H, W).

The model encodes every tile, stitches the tile features back into one grid, crops the rows or
columns that only saw padding ("unpadding"), shrinks the grid when it is larger than
`vision_aspect_ratio` allows ("anyres_max_9"), appends a learned newline feature to every row and
puts the base tile's features first. `num_image_tokens` repeats that arithmetic (the processor's
`_get_number_of_features`), so one `<image>` expands to exactly that many copies of itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import transformers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
)
from transformers.image_processing_utils import select_best_resolution

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import ModelSize, build_word_tokenizer
from mbpo_core.models.preprocess import normalize, resize_bicubic, to_channels_first


class LlavaOnevisionProcessor(transformers.LlavaOnevisionProcessor):
    """The stock processor without its video processor, named like the stock one.

    The stock `__init__` requires a video processor, and LLaVA-OneVision's only one needs
    torchvision, which this project does not install (passing `video_processor=None` is refused by
    the stock class check). ProcessorMixin reads its sub-processors and the settings it saves off
    the `__init__` signature, so this one lists the image processor, the tokenizer and every stock
    setting, and nothing else. Everything else, including the `<image>` expansion, is the stock code.

    The saved `processor_config.json` names `"processor_class": "LlavaOnevisionProcessor"` and
    `"image_processor_type": "LlavaOnevisionImageProcessor"` (stock classes), and carries a
    `"video_processor"` entry with the image settings, so the stock processor, which loads a video
    processor too, loads the directory wherever torchvision is installed.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: Any = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            video_processor=None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = super().__call__(*args, **kwargs)
        # `batch_num_images` only tells the model which images were tiled: all of them when every
        # sample has one image, which is also what the model assumes without it. Dropped in that
        # case, because TRL forwards every processor output to its log-prob pass, which takes no
        # such argument (multi-image samples keep it).
        counts = output.get("batch_num_images")
        if counts is not None and all(int(n) == 1 for n in counts):
            del output["batch_num_images"]
        return output

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        ip = self.image_processor
        # What the stock LlavaOnevisionVideoProcessor needs to load: the image processor's settings.
        output["video_processor"] = {
            "video_processor_type": "LlavaOnevisionVideoProcessor",
            "size": dict(ip.size),
            "resample": int(ip.resample),
            "do_resize": ip.do_resize,
            "do_rescale": ip.do_rescale,
            "rescale_factor": ip.rescale_factor,
            "do_normalize": ip.do_normalize,
            "image_mean": list(ip.image_mean),
            "image_std": list(ip.image_std),
            "do_convert_rgb": ip.do_convert_rgb,
        }
        return output


def _pil_image_processor(ip: Any) -> Any:
    """The PIL-backend image processor with `ip`'s settings. With torchvision installed, loading picks
    the torchvision backend, whose resize is not PIL's; `pixel_inputs` reproduces the PIL one."""
    if isinstance(ip, LlavaOnevisionImageProcessorPil):
        return ip
    settings = {k: v for k, v in ip.to_dict().items() if k not in ("image_processor_type", "processor_class")}
    return LlavaOnevisionImageProcessorPil(**settings)


class LlavaOnevisionAdapter(VLMAdapter):
    family = "llava_onevision"
    model_class: ClassVar[Any] = LlavaOnevisionForConditionalGeneration
    processor_class: ClassVar[Any] = LlavaOnevisionProcessor
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")

    def __init__(self, model: Any, processor: Any) -> None:
        processor.image_processor = _pil_image_processor(processor.image_processor)
        super().__init__(model, processor)
        ip = processor.image_processor
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        if not ip.do_resize or ip.do_center_crop:
            raise ValueError("LLaVA-OneVision image processors must resize and must not centre-crop")
        if ip.size.height != ip.size.width:
            raise ValueError("LLaVA-OneVision tiles must be square")
        if int(ip.resample) != 3:  # PIL BICUBIC
            raise ValueError("only bicubic LLaVA-OneVision image processors are supported")
        if not processor.num_image_tokens:
            raise ValueError("the processor does not say how many features one tile has (num_image_tokens)")
        self._ip = ip
        self.tile: int = int(ip.size.height)
        self.pinpoints: list[list[int]] = [list(p) for p in ip.image_grid_pinpoints]

    # ---- sizes -----------------------------------------------------------------------------------

    def best_resolution(self, height: int, width: int) -> tuple[int, int]:
        """The pinpoint (height, width) the image is fitted into (the processor's choice)."""
        best = select_best_resolution((height, width), self.pinpoints)
        return int(best[0]), int(best[1])

    def fitted_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the image is resized to inside its pinpoint (transformers' `get_patch_output_size`)."""
        target_h, target_w = self.best_resolution(height, width)
        scale_h, scale_w = target_h / height, target_w / width
        if scale_w < scale_h:
            return min(math.ceil(height * scale_w), target_h), target_w
        return target_h, min(math.ceil(width * scale_h), target_w)

    def num_tiles(self, height: int, width: int) -> int:
        """How many tiles the processor outputs for one image: the pinpoint's tiles + the base image."""
        target_h, target_w = self.best_resolution(height, width)
        return math.ceil(target_h / self.tile) * math.ceil(target_w / self.tile) + 1

    def num_image_tokens(self, height: int, width: int) -> int:
        """Base tile features + the unpadded (and possibly shrunk) tile grid + one newline per row."""
        side = math.isqrt(int(self.processor.num_image_tokens))  # features along one tile side
        target_h, target_w = self.best_resolution(height, width)
        grid_h, grid_w = side * (target_h // self.tile), side * (target_w // self.tile)
        # Unpadding: drop the feature rows / columns that only saw the black border.
        if width / height > grid_w / grid_h:
            kept = int(round(height * (grid_w / width), 7))
            grid_h -= 2 * ((grid_h - kept) // 2)
        else:
            kept = int(round(width * (grid_h / height), 7))
            grid_w -= 2 * ((grid_w - kept) // 2)
        rows, cols = grid_h, grid_w
        # "anyres_max_N": a grid of more than ~N tiles' worth of features is shrunk to about N tiles.
        max_tiles = int(str(self.processor.vision_aspect_ratio).removeprefix("anyres_max_"))
        ratio = math.sqrt(grid_h * grid_w / (max_tiles * side**2))
        if ratio > 1.1:
            rows, cols = int(grid_h // ratio), int(grid_w // ratio)
        count = int(self.processor.num_image_tokens) + rows * cols + rows  # base tile first
        return count - 1 if self.processor.vision_feature_select_strategy == "default" else count

    # ---- pixels ----------------------------------------------------------------------------------

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B, 1 + n_tiles, 3, S, S) normalised, image_sizes (B, 2) = H, W.

        Tile 0 is the whole image resized to S x S; then the image resized into its best-fit
        pinpoint, centred on black (zero) padding, cut into S x S tiles row by row.
        """
        images = to_channels_first(pixels.float())
        batch, height, width = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
        s = self.tile
        target_h, target_w = self.best_resolution(height, width)
        fitted_h, fitted_w = self.fitted_size(height, width)
        fitted = resize_bicubic(images, fitted_h, fitted_w)
        top, left = (target_h - fitted_h) // 2, (target_w - fitted_w) // 2
        canvas = F.pad(fitted, (left, target_w - fitted_w - left, top, target_h - fitted_h - top), value=0.0)
        if target_h % s or target_w % s:
            # divide_to_patches leaves a smaller last row / column; the stacked output would not hold it.
            raise ValueError(f"pinpoint {target_h}x{target_w} is not a multiple of the tile size {s}")
        rows, cols = target_h // s, target_w // s
        # (B, 3, rows*S, cols*S) -> (B, rows*cols, 3, S, S), row-major like divide_to_patches.
        tiles = canvas.reshape(batch, 3, rows, s, cols, s).permute(0, 2, 4, 1, 3, 5)
        tiles = tiles.reshape(batch, rows * cols, 3, s, s)
        base = resize_bicubic(images, s, s).unsqueeze(1)
        stacked = torch.cat([base, tiles], dim=1)
        if self._ip.do_normalize:
            stacked = normalize(
                stacked.reshape(-1, 3, s, s), self._ip.image_mean, self._ip.image_std
            ).reshape(stacked.shape)
        sizes = torch.tensor([[height, width]], dtype=torch.long, device=pixels.device).repeat(batch, 1)
        return {"pixel_values": stacked, "image_sizes": sizes}


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# LLaVA-OneVision's SigLIP uses 14 px patches (384 px tiles, 27 x 27 = 729 features each).
OV_PATCH = 14
# SigLIP statistics: what LLaVA-OneVision's checkpoints normalise with.
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
OV_SPECIAL = {
    "pad": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "image": "<image>",
    "video": "<video>",
}

# llava-hf/llava-onevision-*-hf's template (Qwen2 ChatML, images first, then videos, then text); it has
# no default system prompt.
OV_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<image>\n{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' or 'video' in item %}<video>\n{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # fmt: skip


def grid_pinpoints(tile: int, max_side: int) -> list[list[int]]:
    """Every (height, width) made of whole tiles with both sides at most `max_side` (the real
    checkpoints: 384 px tiles up to 6 x 6)."""
    steps = range(tile, max(tile, max_side) + 1, tile)
    return [[h, w] for h in steps for w in steps]


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """`image_size` is the tile side (the processor's `size`, a multiple of 14); the grid pinpoints are
    every whole-tile resolution up to `max_image_size` per side (default 2 tiles), so with 56 / 112 a
    56x84 image becomes the base tile + 2 tiles and a 200x150 image the base tile + 4 tiles."""
    if image_size % OV_PATCH:
        raise ValueError(f"LLaVA-OneVision image_size must be a multiple of the patch size {OV_PATCH}")
    tokenizer = build_word_tokenizer(words, OV_SPECIAL, lowercase=lowercase)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints(image_size, max_image_size or 2 * image_size),
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // OV_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=OV_CHAT_TEMPLATE,
        image_token=OV_SPECIAL["image"],
        video_token=OV_SPECIAL["video"],
        vision_aspect_ratio="anyres_max_9",
    )


def tiny_config(processor: Any, s: ModelSize) -> Any:
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    ip = processor.image_processor
    vision = {
        "model_type": "siglip_vision_model",
        **s.vision_fields(),
        "image_size": int(ip.size["height"]),
        "patch_size": OV_PATCH,
        "vision_use_head": False,
    }
    text = {
        "model_type": "qwen2",
        **s.text_fields(len(tokenizer)),
        "bos_token_id": None,
        "eos_token_id": ids(OV_SPECIAL["im_end"]),
        "pad_token_id": ids(OV_SPECIAL["pad"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids(OV_SPECIAL["image"]),
        video_token_index=ids(OV_SPECIAL["video"]),
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        vision_feature_layer=-1,
        image_grid_pinpoints=[list(p) for p in ip.image_grid_pinpoints],
        vision_aspect_ratio=processor.vision_aspect_ratio,
        projector_hidden_act="gelu",
        tie_word_embeddings=s.tie_word_embeddings,
    )


ADAPTER = LlavaOnevisionAdapter
