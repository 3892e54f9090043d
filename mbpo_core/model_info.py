"""Torch-free inspection of a local Hugging Face model directory.

The API registers base models with this (it never loads weights); the model loader uses the same
`detect_family` so there is one answer to "which family is this?".
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# model_type in config.json -> family name used everywhere in the project.
FAMILIES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "llava": "llava",
}


class ModelDirError(ValueError):
    """The directory is not a usable local model; the message says why."""


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
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ModelDirError(f"{path.name}: implausible safetensors header")
        header = json.loads(f.read(n))
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in meta["shape"]:
            count *= int(dim)
        total += count
    return total


def inspect_model_dir(path: str | Path) -> ModelInfo:
    root = Path(path)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ModelDirError(f"{root}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelDirError("config.json: not a JSON object")
    if config.get("auto_map") or any(p.suffix == ".py" for p in root.iterdir()):
        raise ModelDirError("model needs trust_remote_code (custom code is never executed)")
    family = detect_family(config)
    if family is None:
        raise ModelDirError(
            f"unknown model family {config.get('model_type')!r}; supported: {', '.join(sorted(FAMILIES))}"
        )
    weights = sorted(p.name for p in root.glob("*.safetensors"))
    if not weights:
        raise ModelDirError("no *.safetensors weights (pickled .bin weights are refused)")
    return ModelInfo(
        family=family,
        model_type=str(config["model_type"]),
        architectures=list(config.get("architectures") or []),
        param_count=sum(_safetensors_param_count(root / w) for w in weights),
        weight_files=weights,
    )
