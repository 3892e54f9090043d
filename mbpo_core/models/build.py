"""Offline construction of small, randomly initialised models of the supported families.

No hub is reachable, so tests, the testbed and the benchmarks build their models here: a word-level
tokenizer made in-process (every word the caller will use must be in `words`), the family's real
Hugging Face processor around it, and a real Hugging Face model class with a tiny config. Saving
with `save_pretrained` + `processor.save_pretrained` gives a directory `mbpo_core.models.load_adapter`
loads like a downloaded model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from mbpo_core.models.processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava")

# OpenAI CLIP statistics: what both families' real checkpoints normalise with.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

UNK = "<unk>"
# LLaVA-1.5 uses a CLIP ViT with 14 px patches; its processor needs the patch size to count image tokens.
LLAVA_PATCH = 14
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
LLAVA_SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "image": "<image>"}

# Words every chat prompt needs, plus punctuation and digits so free text degrades gracefully.
# Single letters are multiple-choice options.
BASE_WORDS = [
    "user", "assistant", "system", "USER", "ASSISTANT",
    *"0123456789", *"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *".,:;?!()'\"-/",
]  # fmt: skip

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


@dataclass(frozen=True)
class ModelSize:
    """Shape of a built model: text decoder, then vision tower. Defaults are the "tiny" preset."""

    hidden: int = 32  # text hidden size (Qwen: also what the vision merger projects to)
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 64
    v_dim: int = 32  # vision embedding width
    v_depth: int = 1
    v_heads: int = 2
    max_positions: int = 4096
    tie_word_embeddings: bool = True
    window_size: int = 112  # Qwen2.5-VL windowed vision attention, in pixels
    fullatt_block_indexes: tuple[int, ...] | None = None  # Qwen2.5-VL; None = last block only
    # Embedding rows; None = the tokenizer's size. Benchmarks set the real 151936 so a 3B-sized model
    # carries a 3B model's embedding memory even with a word-level tokenizer.
    vocab_size: int | None = None


# "tiny" = fast unit tests; "small" ~ the testbed scale; "100m" (97 M for Qwen) and "3b" = benchmarks.
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(),
    "small": ModelSize(hidden=64, ffn=128, v_dim=64, v_depth=2, v_heads=4),
    "100m": ModelSize(
        hidden=768, layers=12, heads=12, kv_heads=4, ffn=2048, v_dim=384, v_depth=12, v_heads=6
    ),
    # Qwen2.5-VL-3B's shapes (its vision MLP is 3420 wide, ours 2 * v_dim = 2560: ~0.1 B fewer).
    "3b": ModelSize(
        hidden=2048,
        layers=36,
        heads=16,
        kv_heads=2,
        ffn=11008,
        v_dim=1280,
        v_depth=32,
        v_heads=16,
        max_positions=128000,
        fullatt_block_indexes=(7, 15, 23, 31),
        vocab_size=151936,
    ),
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_word_tokenizer(words: Iterable[str], special: Mapping[str, str], *, lowercase: bool = True) -> Any:
    """A word-level fast tokenizer: special tokens first (stable ids), then base words, then `words`.

    Text is split into words and single punctuation marks; whitespace carries no token, so decoding
    joins tokens with spaces. Unknown words map to `<unk>`.
    """
    vocab: dict[str, int] = {}
    for token in [UNK, *special.values()]:
        vocab.setdefault(token, len(vocab))
    for word in [*BASE_WORDS, *words]:
        for piece in _split_words(word.lower() if lowercase else word):
            vocab.setdefault(piece, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase() if lowercase else normalizers.Sequence([])
    # One token per run of word characters, one per punctuation mark (so "(B)." -> "(", "b", ")", ".").
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    specials = {"unk_token": UNK, "pad_token": special["pad"]}
    if "bos" in special:
        specials["bos_token"] = special["bos"]
    specials["eos_token"] = special.get("eos", special.get("im_end", special["pad"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    others = [t for t in special.values() if t not in specials.values()]
    tokenizer.add_special_tokens({"additional_special_tokens": others})
    return tokenizer


def _split_words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def build_processor(
    family: str,
    words: Iterable[str],
    *,
    image_size: int = 112,
    max_image_size: int | None = None,
    lowercase: bool = True,
) -> Any:
    """The family's real Hugging Face processor around a word-level tokenizer.

    Qwen: `min_pixels = image_size**2` and `max_pixels = max_image_size**2` (default: equal), so an
    `image_size` square (a multiple of 28) passes unresized while other sizes follow smart_resize.
    LLaVA: resize the shortest edge to `image_size` and centre-crop an `image_size` square (CLIP style).
    """
    _check_family(family)
    if family == "llava":
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
    if image_size % 28:
        raise ValueError("Qwen image_size must be a multiple of 28 (patch 14 x merge 2)")
    tokenizer = build_word_tokenizer(words, QWEN_SPECIAL, lowercase=lowercase)
    max_side = max_image_size or image_size
    qwen_image_processor = Qwen2VLImageProcessorPil(
        min_pixels=image_size * image_size,
        max_pixels=max_side * max_side,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    cls = ImageOnlyQwen2VLProcessor if family == "qwen2_vl" else ImageOnlyQwen2_5_VLProcessor
    return cls(image_processor=qwen_image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)


def _qwen_config(family: str, tokenizer: Any, s: ModelSize) -> Any:
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s.hidden // s.heads
    # M-RoPE splits the rotary half-dimension into (time, height, width) sections.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "vocab_size": s.vocab_size or len(tokenizer),
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": s.max_positions,
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


def _llava_config(processor: Any, s: ModelSize) -> Any:
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    image_size = processor.image_processor.crop_size["height"]
    # CLIP vision tower: needs neither torchvision nor the hub.
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": s.v_dim,
        "intermediate_size": 2 * s.v_dim,
        "num_hidden_layers": s.v_depth,
        "num_attention_heads": s.v_heads,
        "image_size": image_size,
        "patch_size": LLAVA_PATCH,
        "projection_dim": s.v_dim,
    }
    text = {
        "model_type": "llama",
        "vocab_size": s.vocab_size or len(tokenizer),
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": s.max_positions,
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


def build_model(
    family: str,
    processor: Any,
    size: str | ModelSize | Mapping[str, Any] = "tiny",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A randomly initialised real Hugging Face model matching `processor`'s vocabulary and special tokens.

    `size`: a preset name ("tiny", "small", "100m"), a `ModelSize`, or a dict of `ModelSize` fields
    overriding "tiny". Same seed + same arguments = the same weights. The weights are created
    directly on `device` in `dtype` (a 3B model initialises in seconds on a GPU, minutes on a CPU).
    """
    _check_family(family)
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; presets: {sorted(SIZES)}")
        shape = SIZES[size]
    elif isinstance(size, ModelSize):
        shape = size
    else:
        shape = replace(SIZES["tiny"], **size)
    model_class: type[PreTrainedModel]
    if family == "llava":
        config, model_class = _llava_config(processor, shape), LlavaForConditionalGeneration
    else:
        config = _qwen_config(family, processor.tokenizer, shape)
        model_class = (
            Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
        )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model.eval()
