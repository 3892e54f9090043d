"""Small real models for inference tests: a tiny random Qwen2-VL, a LoRA adapter on it (as a
training checkpoint saves one) and the same adapter merged into a loadable model directory; and
settings for either transport of the inference channels."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from infra.settings import Settings

WORDS = ["is", "there", "a", "red", "blue", "green", "circle", "square", "in", "the", "image", "yes", "no"]
QUESTION = "is there a red circle in the image"


@dataclass(frozen=True)
class TinyModels:
    base: Path  # a plain model directory
    lora: Path  # adapter_config.json + adapter_model.safetensors, applies to `base`
    merged: Path  # checkpoint layout: <dir>/model/ is the LoRA merged into the base


def build_tiny_models(root: Path) -> TinyModels:
    import torch
    from peft import LoraConfig, get_peft_model

    from mbpo_core.models.build import build_model, build_processor

    processor = build_processor("qwen2_vl", WORDS, image_size=56, max_image_size=112)
    model = build_model("qwen2_vl", processor, "tiny", seed=0)
    base = root / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    torch.manual_seed(1)
    # Random A and B: the adapter visibly changes the model (peft's default B = 0 would not).
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    lora = root / "run" / "checkpoint-2"
    peft_model.save_pretrained(lora)
    merged_model = peft_model.merge_and_unload()
    merged = root / "run" / "checkpoint-4"
    merged_model.save_pretrained(merged / "model")
    processor.save_pretrained(merged / "model")
    return TinyModels(base=base, lora=lora, merged=merged)


def png_bytes(width: int = 56, height: int = 56, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_messages(question: str = QUESTION) -> list[dict[str, object]]:
    """One user turn with an image and `question`, in the OpenAI-style content-parts form."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@contextmanager
def channel_settings(transport: str, home: Path) -> Iterator[Settings]:
    """Settings whose inference channels (infra.requests, infra.replies) use `transport`: "file"
    (embedded: MBPO_HOME) or "redis" (a throwaway key prefix on the test Redis, deleted after)."""
    from tests.helpers import services

    if transport == "file":
        yield Settings(env="test", home=home)
        return
    services.require_redis()
    prefix = services.broker_prefix()
    try:
        yield Settings(env="test", home=home, broker_url=services.REDIS_URL, broker_key_prefix=prefix)
    finally:
        services.delete_redis_prefix(prefix)
