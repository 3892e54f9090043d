"""Idefics3: longest-edge LANCZOS resize, a grid of square tiles plus a downscaled global image.

The processor (Idefics3ImageProcessorPil, the PIL one: no torchvision) resizes the longest edge to
`size["longest_edge"]`, resizes again so both sides are multiples of the tile size
`max_image_size["longest_edge"]`, cuts that into a rows x cols grid of tiles (row-major) and appends
the whole image resized to one tile (the global image); an image that fits in one tile is passed as
that tile alone. Every resize is PIL LANCZOS on uint8, so `pixel_inputs` chains `resize_lanczos`
(bit-exact, straight-through rounding) the same way. The prompt expands `<image>` into, per tile,
`<fake_token_around_image><row_r_col_c>` + `<image>` * image_seq_len (a newline after each row),
then `\\n<fake_token_around_image><global-img>` + `<image>` * image_seq_len + `<fake_token_around_image>`;
`image_sequence` builds that string with the processor's own `replace_image_token`.

SmolVLM (smolvlm.py) shares all of this with another processor class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import (
    MAX_IMAGE_SIZE,
    _resize_output_size_rescale_to_max_len,
    _resize_output_size_scale_below_upper_bound,
)

from mbpo_core.models.base import Pixels, VLMAdapter
from mbpo_core.models.build import ModelSize, build_word_tokenizer
from mbpo_core.models.preprocess import normalize, resize_lanczos, to_channels_first


class Idefics3Adapter(VLMAdapter):
    family = "idefics3"
    model_class: ClassVar[Any] = Idefics3ForConditionalGeneration
    processor_class: ClassVar[Any] = Idefics3Processor
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "pixel_attention_mask")

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        if not (ip.do_rescale and abs(ip.rescale_factor - 1 / 255) < 1e-12):
            # Pixels in [0,1] are uint8 / 255: any other rescale would need its own mapping.
            raise ValueError("only image processors that rescale uint8 by 1/255 are supported")
        if int(ip.resample) != 1:  # PIL LANCZOS, what every Idefics3 / SmolVLM checkpoint uses
            raise ValueError(f"only LANCZOS resampling is supported, the processor uses {ip.resample!r}")
        self._ip = ip
        self.tile = int(ip.max_image_size["longest_edge"])

    # ---- the processor's geometry ----------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the processor's first resize (longest edge to size["longest_edge"])."""
        if not self._ip.do_resize:
            return height, width
        size = self._ip.size
        longest = size["longest_edge"] if isinstance(size, dict) else size.longest_edge
        if longest:
            height, width = _resize_output_size_rescale_to_max_len(height, width, max_len=longest)
            # (HF annotates max_len as a dict; the processor passes this int)
            return _resize_output_size_scale_below_upper_bound(
                height,
                width,
                max_len=MAX_IMAGE_SIZE,  # type: ignore[arg-type]
            )
        h, w = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        return int(h), int(w)

    def encoder_size(self, height: int, width: int) -> tuple[int, int]:
        """`resize_for_vision_encoder`: both sides up to multiples of the tile, keeping the aspect ratio
        (the same float arithmetic as the processor, so the same off-by-one truncations)."""
        tile = self.tile
        aspect_ratio = width / height
        if width >= height:
            width = math.ceil(width / tile) * tile
            height = int(width / aspect_ratio)
            height = math.ceil(height / tile) * tile
        else:
            height = math.ceil(height / tile) * tile
            width = int(height * aspect_ratio)
            width = math.ceil(width / tile) * tile
        return height, width

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for a raw image of this size; (0, 0) = the global image only."""
        if not self._ip.do_image_splitting:
            return 0, 0
        h, w = self.encoder_size(*self.resized_size(height, width))
        if h > self.tile or w > self.tile:
            return (h - self.tile) // self.tile + 1, (w - self.tile) // self.tile + 1
        return 0, 0

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` placeholders only (the fake / row-col / global marker tokens come on top)."""
        rows, cols = self.grid(height, width)
        return int(self.processor.image_seq_len) * (rows * cols + 1)

    def image_sequence(self, height: int, width: int) -> str:
        """The text that replaces one `<image>`: the processor's own `replace_image_token`."""
        rows, cols = self.grid(height, width)
        return str(self.processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0))

    # ---- differentiable preprocessing ------------------------------------------------------------

    def _frames(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0,1] -> the processor's frames in order, each (B, 3, h, w) in [0,1]."""
        if self._ip.do_resize:
            images = resize_lanczos(images, *self.resized_size(images.shape[-2], images.shape[-1]))
        tile = self.tile
        if not self._ip.do_image_splitting:
            return [resize_lanczos(images, tile, tile)]
        images = resize_lanczos(images, *self.encoder_size(images.shape[-2], images.shape[-1]))
        height, width = images.shape[-2:]
        if height <= tile and width <= tile:
            return [images]
        rows, cols = (height - tile) // tile + 1, (width - tile) // tile + 1
        tiles = [
            images[..., r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            for r in range(rows)
            for c in range(cols)
        ]
        return [*tiles, resize_lanczos(images, tile, tile)]  # the global image comes last

    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """(B, H, W, 3) -> pixel_values (B, n_frames, 3, h, w) normalised, zero-padded to the largest
        frame, and pixel_attention_mask (B, n_frames, h, w) int64 (1 = real pixel), as the processor."""
        frames = self._frames(to_channels_first(pixels.float()))
        if self._ip.do_normalize:
            frames = [normalize(f, self._ip.image_mean, self._ip.image_std) for f in frames]
        if not self._ip.do_pad:
            return {"pixel_values": torch.stack(frames, dim=1)}
        max_h = max(f.shape[-2] for f in frames)
        max_w = max(f.shape[-1] for f in frames)
        padded, masks = [], []
        for f in frames:
            h, w = f.shape[-2:]
            padded.append(F.pad(f, (0, max_w - w, 0, max_h - h)))  # zeros, after normalisation
            mask = torch.zeros((max_h, max_w), dtype=torch.long, device=f.device)
            mask[:h, :w] = 1
            masks.append(mask)
        batch = pixels.shape[0]
        return {
            "pixel_values": torch.stack(padded, dim=1),
            "pixel_attention_mask": torch.stack(masks).unsqueeze(0).expand(batch, -1, -1, -1).contiguous(),
        }


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# The vision tower's patch and the connector's pixel shuffle: a 56 px tile -> 4x4 patches -> 2x2 = 4 tokens.
PATCH_SIZE = 14
SCALE_FACTOR = 2

# Idefics3's image markers, including the 6 x 6 grid of tile position tokens its tokenizer carries.
IMAGE_SPECIAL = {
    "fake_image": "<fake_token_around_image>",
    "image": "<image>",
    "global_image": "<global-img>",
    **{f"row_{r}_col_{c}": f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)},
}
IDEFICS3_SPECIAL = {
    "pad": "<|reserved_special_token_0|>",
    "bos": "<|begin_of_text|>",
    "eos": "<end_of_utterance>",  # the end of a turn: what generation stops at
    **IMAGE_SPECIAL,
}
# Words of the chat format (the template capitalises the roles).
CHAT_WORDS = ["User", "Assistant"]

# Idefics3-8B-Llama3's chat template (it has no system prompt), accepting string contents too.
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tile_geometry(image_size: int, max_image_size: int | None) -> tuple[int, int, int]:
    """(tile, longest_edge, image_seq_len): `image_size` is the tile (the vision encoder's input,
    `max_image_size["longest_edge"]`), `max_image_size` the longest edge of the first resize
    (`size["longest_edge"]`, default: one tile, i.e. no splitting). The conftest's 56 / 112 gives
    2 x 2 tiles of 56 px plus the global image, 4 tokens each."""
    if image_size % (PATCH_SIZE * SCALE_FACTOR):
        raise ValueError(
            f"image_size must be a multiple of {PATCH_SIZE * SCALE_FACTOR} (patch x scale factor)"
        )
    longest = max_image_size or image_size
    if longest < image_size:
        raise ValueError("max_image_size (the longest edge) must be at least image_size (the tile)")
    return image_size, longest, (image_size // PATCH_SIZE) ** 2 // SCALE_FACTOR**2


def tiny_processor(
    words: Iterable[str], *, image_size: int, max_image_size: int | None, lowercase: bool
) -> Any:
    """The stock Idefics3Processor with the PIL image processor (LANCZOS, mean = std = 0.5 as the real
    checkpoints); `image_size` = tile side, `max_image_size` = longest edge (see `tile_geometry`)."""
    tile, longest, seq_len = tile_geometry(image_size, max_image_size)
    tokenizer = build_word_tokenizer([*CHAT_WORDS, *words], IDEFICS3_SPECIAL, lowercase=lowercase)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest}, max_image_size={"longest_edge": tile}
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )


def tiny_config(processor: Any, size: ModelSize) -> Any:
    return Idefics3Config(**config_kwargs(processor, size))


def config_kwargs(processor: Any, s: ModelSize) -> dict[str, Any]:
    """Idefics3Config / SmolVLMConfig arguments: a SigLIP-like tower on one tile, a Llama decoder."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    tile = int(processor.image_processor.max_image_size["longest_edge"])
    vision = {
        **s.vision_fields(),
        "image_size": tile,
        "patch_size": PATCH_SIZE,
    }
    text = {
        "model_type": "llama",
        **s.text_fields(len(tokenizer)),
        "rms_norm_eps": 1e-5,
        "bos_token_id": ids(tokenizer.bos_token),
        "eos_token_id": ids(tokenizer.eos_token),
        "pad_token_id": ids(tokenizer.pad_token),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    return {
        "vision_config": vision,
        "text_config": text,
        "scale_factor": SCALE_FACTOR,
        "image_token_id": ids(IMAGE_SPECIAL["image"]),
        "pad_token_id": ids(tokenizer.pad_token),
        "tie_word_embeddings": s.tie_word_embeddings,
    }


ADAPTER = Idefics3Adapter
