"""InternVL 3 (transformers-native InternVLForConditionalGeneration): dynamic tiling.

The processor (GotOcr2 image processor with `crop_to_patches`) picks a grid of `cols x rows` square
tiles whose aspect ratio is closest to the image's (among grids of `min_patches..max_patches` tiles),
resizes the whole image to that canvas, cuts it into tiles row by row and, when there is more than
one tile, appends a thumbnail: the whole image resized to one tile. Every tile becomes
`image_seq_length` `<IMG_CONTEXT>` tokens (pixel-shuffled ViT features), and the prompt's one
`<IMG_CONTEXT>` expands to `<img>` + tiles * image_seq_length `<IMG_CONTEXT>` + `</img>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import transformers
from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration
from transformers.image_utils import PILImageResampling
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import CLIP_MEAN, CLIP_STD, ModelSize, build_word_tokenizer
from mbpo_core.models.preprocess import normalize, resize_bicubic, to_channels_first


class InternVLProcessor(transformers.InternVLProcessor):
    """InternVLProcessor without its video processor, named like the stock class.

    The stock processor requires an InternVLVideoProcessor, which needs torchvision (not installed
    here). Dropping the argument from `__init__` makes ProcessorMixin treat the processor as image +
    tokenizer only; everything else, including the `<img>...</img>` expansion, is the stock code.
    Like the image-only Qwen processors (mbpo_core.models.processors) it carries the stock class's
    name, so a saved checkpoint records `"processor_class": "InternVLProcessor"` (and the stock
    GotOcr2 image processor) and stock transformers with torchvision loads it with AutoProcessor
    (taking the default video processor of the model type).
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: Any = None,
        **kwargs: Any,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            video_processor=None,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )


class InternVLAdapter(VLMAdapter):
    family = "internvl"
    model_class: ClassVar[Any] = InternVLForConditionalGeneration
    processor_class: ClassVar[Any] = InternVLProcessor
    # num_patches (tiles per image) is consumed by the processor itself; the model takes pixel_values only.
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        if ip.resample not in (PILImageResampling.BICUBIC, int(PILImageResampling.BICUBIC)):
            raise ValueError(f"only bicubic resampling is supported, got {ip.resample!r}")
        self._ip = ip
        # The processor's own call defaults (InternVLProcessor.images_kwargs: crop_to_patches=True)
        # override the image processor's attributes, exactly as ProcessorMixin._merge_kwargs does.
        defaults = getattr(processor, "images_kwargs", {})
        self.crop_to_patches = bool(defaults.get("crop_to_patches", ip.crop_to_patches))
        self.min_patches = int(defaults.get("min_patches", ip.min_patches))
        self.max_patches = int(defaults.get("max_patches", ip.max_patches))
        self.tile_height, self.tile_width = int(ip.size.height), int(ip.size.width)
        self.image_seq_length = int(processor.image_seq_length)

    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """(columns, rows) of the tile grid for a raw image of this size; (1, 1) when not tiling."""
        if not (self.crop_to_patches and self.max_patches > 1):
            return 1, 1
        cols, rows = get_optimal_tiled_canvas(
            (height, width), (self.tile_height, self.tile_width), self.min_patches, self.max_patches
        )
        return int(cols), int(rows)

    def num_tiles(self, height: int, width: int) -> int:
        """Tiles one image becomes: the grid, plus a thumbnail when the grid has more than one tile."""
        cols, rows = self.tile_grid(height, width)
        return cols * rows + (1 if cols * rows > 1 else 0)

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<IMG_CONTEXT>` tokens of one image (the `<img>` / `</img>` around them not counted)."""
        return self.image_seq_length * self.num_tiles(height, width)

    def image_sequence(self, height: int, width: int) -> str:
        """The text the processor puts in place of one `<IMG_CONTEXT>` placeholder (its own
        `replace_image_token`): `<img>` + tiles * image_seq_length `<IMG_CONTEXT>` + `</img>`."""
        return str(self.processor.replace_image_token({"num_patches": [self.num_tiles(height, width)]}, 0))

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B * tiles, 3, tile_h, tile_w): per image its grid tiles in
        row-major order, then its thumbnail (when more than one tile), as the processor orders them."""
        images = to_channels_first(pixels.float())
        batch, _, height, width = images.shape
        th, tw = self.tile_height, self.tile_width
        if self.crop_to_patches and self.max_patches > 1:
            cols, rows = self.tile_grid(height, width)
            # crop_image_to_patches resizes to the canvas whatever do_resize says.
            canvas = resize_bicubic(images, rows * th, cols * tw)
            tiles = canvas.reshape(batch, 3, rows, th, cols, tw).permute(0, 2, 4, 1, 3, 5)
            tiles = tiles.reshape(batch, rows * cols, 3, th, tw)
            if rows * cols > 1:
                thumbnail = resize_bicubic(images, th, tw).unsqueeze(1)
                tiles = torch.cat([tiles, thumbnail], dim=1)
        else:
            if self._ip.do_resize:
                images = resize_bicubic(images, th, tw)
            tiles = images.unsqueeze(1)
        tiles = tiles.reshape(-1, 3, tiles.shape[-2], tiles.shape[-1])
        if self._ip.do_normalize:
            tiles = normalize(tiles, self._ip.image_mean, self._ip.image_std)
        return {"pixel_values": tiles}


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# InternVL 3's vision tower (InternViT) uses 14 px patches; pixel shuffle halves each side of the grid.
INTERNVL_PATCH = 14
DOWNSAMPLE_RATIO = 0.5

# InternVL 3 sits on a Qwen2.5 text model: Qwen's chat tokens plus InternVL's image markers.
INTERNVL_SPECIAL = {
    "pad": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "start_image": "<img>",
    "end_image": "</img>",
    "image": "<IMG_CONTEXT>",
    "video": "<video>",
}
# The named tokenizer attributes InternVLProcessor reads (as in InternVL3-*-hf's tokenizer_config.json).
INTERNVL_NAMED_TOKENS = {
    "start_image_token": INTERNVL_SPECIAL["start_image"],
    "end_image_token": INTERNVL_SPECIAL["end_image"],
    "context_image_token": INTERNVL_SPECIAL["image"],
    "video_token": INTERNVL_SPECIAL["video"],
}

# InternVL3-*-hf's template (transformers' conversion script); it has no default system prompt.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """Tiles of `image_size` px (a multiple of 28: 14 px patches, 2x2 pixel shuffle) and at most
    `(max_image_size // image_size) ** 2` tiles (default: one tile, i.e. a plain resize). With 56 / 112
    that is up to 4 tiles (+ a thumbnail) of 4 tokens each."""
    if image_size % (2 * INTERNVL_PATCH):
        raise ValueError(
            "InternVL image_size (the tile size) must be a multiple of 28 (patch 14 x shuffle 2)"
        )
    tokenizer = build_word_tokenizer(words, INTERNVL_SPECIAL, lowercase=lowercase)
    # Named model-specific tokens, saved in tokenizer_config.json like the real checkpoints'.
    tokenizer._set_model_specific_special_tokens(INTERNVL_NAMED_TOKENS)
    max_patches = max(1, (max_image_size or image_size) // image_size) ** 2
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    grid = image_size // INTERNVL_PATCH
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=int(grid * grid * DOWNSAMPLE_RATIO**2),
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


def tiny_config(processor: Any, s: ModelSize) -> Any:
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    tile = processor.image_processor.size["height"]
    vision = {
        **s.vision_fields(),
        "image_size": tile,
        "patch_size": INTERNVL_PATCH,
    }
    text = {
        "model_type": "qwen2",
        **s.text_fields(len(tokenizer)),
        "bos_token_id": None,
        "eos_token_id": ids(INTERNVL_SPECIAL["im_end"]),
        "pad_token_id": ids(INTERNVL_SPECIAL["pad"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids(INTERNVL_SPECIAL["image"]),
        image_seq_length=processor.image_seq_length,
        downsample_ratio=DOWNSAMPLE_RATIO,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=s.tie_word_embeddings,
    )


ADAPTER = InternVLAdapter
