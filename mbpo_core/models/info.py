"""Torch-free inspection of a local Hugging Face model directory.

The API registers base models with this (it never loads weights); the model loader uses the same
`detect_family` so there is one answer to "which family is this?".
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# The one registry of supported families: model_type in config.json -> the family, which is also the
# module of mbpo_core.models holding its adapter (ADAPTER) and its tiny builder.
FAMILIES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl_moe",
    "llava": "llava",
    "llava_onevision": "llava_onevision",
    "internvl": "internvl",
    "gemma3": "gemma3",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
}


class ModelDirError(ValueError):
    """The directory is not a usable local model; the message says why, `code` says what kind:
    not_a_model_dir, remote_code, unknown_family, processor_mismatch, no_weights, bad_weights."""

    def __init__(self, message: str, code: str = "invalid_model"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ModelInfo:
    family: str
    model_type: str
    architectures: list[str]
    param_count: int
    weight_files: list[str]


def detect_family(config: dict) -> str | None:
    return FAMILIES.get(str(config.get("model_type", "")))


def _safetensors_param_count(path: Path) -> int:
    # The header is a little-endian u64 length followed by JSON naming every tensor's shape.
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ModelDirError(f"{path.name}: implausible safetensors header", "bad_weights")
            header = json.loads(f.read(n))
        total = 0
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= int(dim)
            total += count
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, ModelDirError):
            raise
        raise ModelDirError(f"{path.name}: not a readable safetensors file ({exc})", "bad_weights") from exc
    return total


# Processor and tokenizer configs can also point at custom code through their own auto_map.
_SIDE_CONFIGS = ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def _side_configs_map_code(root: Path) -> bool:
    for name in _SIDE_CONFIGS:
        try:
            data = json.loads((root / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return True
    return False


def _tokenizer_ids(data: dict) -> set[int]:
    """Every token id a `tokenizer.json` can produce (its model's vocabulary and added tokens)."""
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))  # Unigram: a list
    return ids | {int(t["id"]) for t in data.get("added_tokens") or [] if "id" in t}


def _check_tokenizer_fits(root: Path, config: dict) -> None:
    """The processor's tokenizer belongs to this model: each of its ids has an embedding row and the
    model's image token is one of its tokens (a tokenizer copied from another model fails here,
    not at the first forward pass of a run). Checked when the directory has a `tokenizer.json`."""
    try:
        data = json.loads((root / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return
    ids = _tokenizer_ids(data) if isinstance(data, dict) else set()
    if not ids:
        return
    text = config.get("text_config")
    vocab_size = (text.get("vocab_size") if isinstance(text, dict) else None) or config.get("vocab_size")
    if isinstance(vocab_size, int) and max(ids) >= vocab_size:
        raise ModelDirError(
            f"the processor does not match the model: its tokenizer has token ids up to {max(ids)}, "
            f"the model's vocabulary has {vocab_size}",
            "processor_mismatch",
        )
    image_id = config.get("image_token_id", config.get("image_token_index"))
    if isinstance(image_id, int) and image_id not in ids:
        raise ModelDirError(
            f"the processor does not match the model: the model's image token id {image_id} is not a "
            "token of its tokenizer",
            "processor_mismatch",
        )


def inspect_model_dir(path: str | Path) -> ModelInfo:
    root = Path(path)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ModelDirError(f"{root}: no config.json (not a Hugging Face model directory)", "not_a_model_dir")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"config.json: {exc}", "not_a_model_dir") from exc
    if not isinstance(config, dict):
        raise ModelDirError("config.json: not a JSON object", "not_a_model_dir")
    if (
        config.get("auto_map")
        or _side_configs_map_code(root)
        or any(p.suffix == ".py" for p in root.iterdir())
    ):
        raise ModelDirError("model needs trust_remote_code (custom code is never executed)", "remote_code")
    family = detect_family(config)
    if family is None:
        found = ", ".join(str(a) for a in config.get("architectures") or []) or "no architectures listed"
        raise ModelDirError(
            f"unsupported model: model_type {config.get('model_type')!r} ({found}); supported model_types: "
            f"{', '.join(sorted(FAMILIES))}",
            "unknown_family",
        )
    _check_tokenizer_fits(root, config)
    weights = sorted(p.name for p in root.glob("*.safetensors"))
    if not weights:
        raise ModelDirError("no *.safetensors weights (pickled .bin weights are refused)", "no_weights")
    return ModelInfo(
        family=family,
        model_type=str(config["model_type"]),
        architectures=list(config.get("architectures") or []),
        param_count=sum(_safetensors_param_count(root / w) for w in weights),
        weight_files=weights,
    )
