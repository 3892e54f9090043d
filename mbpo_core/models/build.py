"""Offline construction of small, randomly initialised models of the supported families.

No hub is reachable, so tests, the testbed and the benchmarks build their models here: a word-level
tokenizer made in-process (every word the caller will use must be in `words`), the family's real
Hugging Face processor around it, and a real Hugging Face model class with a small config. Saving
with `save_pretrained` + `processor.save_pretrained` gives a directory `load_adapter` loads like a
downloaded model.

What is common lives here (the tokenizer, the size presets); what a family needs lives in its own
module, beside its adapter: `tiny_processor(words, image_size=, max_image_size=, lowercase=)`,
`tiny_config(processor, size)` and optionally `tiny_init(model)` (adjust a fresh random model).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from mbpo_core.models.info import FAMILIES as MODEL_TYPES

FAMILIES = tuple(sorted(set(MODEL_TYPES.values())))

# OpenAI CLIP statistics: what both families' real checkpoints normalise with.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

UNK = "<unk>"

# Words every chat prompt needs, plus punctuation and digits so free text degrades gracefully.
# Single letters are multiple-choice options.
BASE_WORDS = [
    "user", "assistant", "system", "USER", "ASSISTANT",
    *"0123456789", *"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *".,:;?!()'\"-/",
]  # fmt: skip


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

    def text_fields(self, tokenizer_size: int) -> dict[str, int]:
        """The decoder shape in the key names every HF text config uses (families add their own)."""
        return {
            "vocab_size": self.vocab_size or tokenizer_size,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_positions,
        }

    def vision_fields(self) -> dict[str, int]:
        """The ViT shape in the key names of CLIP / SigLIP / InternViT / Idefics3 vision configs."""
        return {
            "hidden_size": self.v_dim,
            "intermediate_size": 2 * self.v_dim,
            "num_hidden_layers": self.v_depth,
            "num_attention_heads": self.v_heads,
        }


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


def family_module(family: str) -> Any:
    """The family's module (its adapter and its tiny builder); one registry: `info.FAMILIES`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"mbpo_core.models.{family}")


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
    """The family's real Hugging Face processor around a word-level tokenizer (`words` must hold every
    word the caller will use). `image_size` / `max_image_size`: what each family's module documents
    (Qwen: min and max side of smart_resize; LLaVA: the shortest edge and the centre crop)."""
    return family_module(family).tiny_processor(
        words, image_size=image_size, max_image_size=max_image_size, lowercase=lowercase
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
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; presets: {sorted(SIZES)}")
        shape = SIZES[size]
    elif isinstance(size, ModelSize):
        shape = size
    else:
        shape = replace(SIZES["tiny"], **size)
    module = family_module(family)
    config = module.tiny_config(processor, shape)
    model_class: type[PreTrainedModel] = module.ADAPTER.model_class
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if (init := getattr(module, "tiny_init", None)) is not None:
        init(model)  # a family whose HF init leaves a random model blind (Gemma 3: zero projection)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model.eval()
