"""Qwen3-VL: Qwen2-VL's processor contract with 16 px patches (smart_resize to multiples of 32).

The stock Qwen3VLProcessor uses Qwen2-VL's image processor: smart_resize to multiples of
`patch_size * merge_size` (16 * 2 = 32) within [min_pixels, max_pixels], a bicubic resize, mean/std
0.5 (not CLIP's), and the same flattened patches in 2x2 merge-window order with the frame repeated
on a temporal axis of 2 (rows of 3 * 2 * 16 * 16). The prompt's `<|image_pad|>` expands to
grid_h * grid_w / 4 copies, and M-RoPE takes `mm_token_type_ids` as in Qwen2-VL. DeepStack (vision
features of intermediate blocks added to the first text layers' hidden states at the image
positions) lives inside the model: it needs no extra inputs.

Real checkpoints name `Qwen2VLImageProcessorFast` (torchvision); without torchvision transformers
loads the PIL one (`Qwen2VLImageProcessorPil`), which is what `pixel_inputs` reproduces.

"Thinking" checkpoints open a `<think>` block in the generation prompt and answer after
`</think>`: `strip_thinking` keeps the answer, and `Qwen3VLAdapter.answer_text` applies it, so every
caller of `generate` (mining, evaluation, spot-checks) verifies the answer, not the reasoning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import transformers
from transformers import (
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
)
from transformers.image_utils import PILImageResampling

from mbpo_core.models.build import ModelSize, build_word_tokenizer
from mbpo_core.models.qwen2_vl import QWEN_SPECIAL, Qwen2VLAdapter

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_thinking(text: str, *, opened: bool = False) -> str:
    """The answer of a Qwen3 completion without its `<think>...</think>` reasoning, whitespace trimmed.

    The answer is what follows the last `</think>` (the opening tag may be in the prompt, as the
    Thinking models' generation prompt ends with `<think>`). `opened`: the prompt opened the block,
    so a completion that never closes it is reasoning cut off before any answer: "". Otherwise an
    unclosed `<think>` ends the answer at that tag, and text without tags is returned as it is.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE) :].strip()
    if opened:
        return ""
    start = text.find(THINK_OPEN)
    return (text[:start] if start >= 0 else text).strip()


class Qwen3VLProcessor(transformers.Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor, named like the stock class.

    The stock processor requires a Qwen3VLVideoProcessor, which needs torchvision (not installed
    here); dropping the argument from `__init__` makes ProcessorMixin treat the processor as image +
    tokenizer only. Everything else, including the `<|image_pad|>` expansion and `mm_token_type_ids`,
    is the stock code. A saved checkpoint records `"processor_class": "Qwen3VLProcessor"` and the
    stock `Qwen2VLImageProcessor`, so stock transformers loads it with AutoProcessor where
    torchvision is installed (mbpo_core.models.processors explains the same choice for Qwen2-VL).
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ):
        super().__init__(
            image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs
        )


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Resize, normalise, patchify, token count and M-RoPE token types are Qwen2-VL's (read off the
    image processor: patch 16, mean/std 0.5); generation strips a thinking block."""

    family = "qwen3_vl"
    model_class: ClassVar[Any] = Qwen3VLForConditionalGeneration
    processor_class: ClassVar[Any] = Qwen3VLProcessor

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        if self._ip.resample not in (PILImageResampling.BICUBIC, int(PILImageResampling.BICUBIC)):
            raise ValueError(f"only bicubic resampling is supported, got {self._ip.resample!r}")
        # A Thinking checkpoint's generation prompt ends inside an open <think> block.
        self.opens_thinking = self.prompt_text("").rstrip().endswith(THINK_OPEN)

    def answer_text(self, decoded: str) -> str:
        """The answer without its `<think>` block (`strip_thinking`), wherever text is decoded:
        generation (mining, evaluation, spot-checks) and streamed chat completions."""
        return strip_thinking(decoded, opened=self.opens_thinking)


# ---- tiny models (mbpo_core.models.build) --------------------------------------------------------

# What Qwen3-VL's checkpoints normalise with (its SigLIP-2 vision tower), instead of CLIP's statistics.
QWEN3_MEAN = [0.5, 0.5, 0.5]
QWEN3_STD = [0.5, 0.5, 0.5]
QWEN3_PATCH = 16

# Qwen3-VL-Instruct's format (no default system prompt); the Thinking checkpoints' template differs
# only in opening the reasoning block after the generation prompt.
_QWEN3_MESSAGES = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
)
QWEN3_CHAT_TEMPLATE = _QWEN3_MESSAGES + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
QWEN3_THINKING_CHAT_TEMPLATE = (
    _QWEN3_MESSAGES + "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def tiny_processor(
    words: Iterable[str],
    *,
    image_size: int,
    max_image_size: int | None,
    lowercase: bool,
    thinking: bool = False,
) -> Any:
    """Qwen3-VL's processor: `min_pixels = image_size**2`, `max_pixels = max_image_size**2` (default:
    equal); smart_resize then rounds each side to a multiple of 32, so only sizes that are multiples
    of 32 within those bounds pass unresized (56 px squares become 64 px). `<think>` / `</think>` are
    ordinary added tokens, as in the real tokenizer (decoding keeps them). `thinking`: the Thinking
    checkpoints' chat template."""
    tokenizer = build_word_tokenizer(words, QWEN_SPECIAL, lowercase=lowercase)
    tokenizer.add_tokens([THINK_OPEN, THINK_CLOSE])
    max_side = max_image_size or image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN3_PATCH,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=image_size * image_size,
        max_pixels=max_side * max_side,
        image_mean=QWEN3_MEAN,
        image_std=QWEN3_STD,
    )
    template = QWEN3_THINKING_CHAT_TEMPLATE if thinking else QWEN3_CHAT_TEMPLATE
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def tiny_config(processor: Any, size: ModelSize) -> Any:
    return qwen3_config("qwen3_vl", processor.tokenizer, size)


def deepstack_indexes(depth: int) -> list[int]:
    """Vision blocks whose features DeepStack injects into the first text layers: the ends of the
    first three quarters of the tower, as in the released models (depth 24 -> 5, 11, 17)."""
    return sorted({max(0, depth * k // 4 - 1) for k in (1, 2, 3)})


def qwen3_config(family: str, tokenizer: Any, s: ModelSize) -> Any:
    """A Qwen3-VL (dense) or Qwen3-VL-MoE config of shape `s` around `tokenizer`'s special tokens."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s.hidden // s.heads
    # Interleaved M-RoPE: (time, height, width) sections of the rotary half-dimension.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text: dict[str, Any] = {
        **s.text_fields(len(tokenizer)),
        "head_dim": head_dim,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
        "pad_token_id": ids(QWEN_SPECIAL["pad"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    deepstack = deepstack_indexes(s.v_depth)[: s.layers]
    vision = {
        "depth": s.v_depth,
        "hidden_size": s.v_dim,
        "intermediate_size": 2 * s.v_dim,
        "num_heads": s.v_heads,
        "out_hidden_size": s.hidden,
        "patch_size": QWEN3_PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,  # the released models' 48 x 48 learned grid
        "deepstack_visual_indexes": deepstack,
    }
    common = {
        "image_token_id": ids(QWEN_SPECIAL["image"]),
        "video_token_id": ids(QWEN_SPECIAL["video"]),
        "vision_start_token_id": ids(QWEN_SPECIAL["vision_start"]),
        "vision_end_token_id": ids(QWEN_SPECIAL["vision_end"]),
        "tie_word_embeddings": s.tie_word_embeddings,
    }
    if family == "qwen3_vl":
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    # Qwen3-VL-MoE: every decoder layer's MLP is a sparse mixture of experts.
    moe = {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": max(1, s.ffn // 2),
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "eos_token_id": ids(QWEN_SPECIAL["im_end"]),
    }
    return Qwen3VLMoeConfig(text_config={**text, **moe}, vision_config=vision, **common)


ADAPTER = Qwen3VLAdapter
