"""Loading a model directory as the adapter of its family.

Each family lives in the module named after it in `mbpo_core.models.info.FAMILIES` and exposes
`ADAPTER`; modules are imported on first use, so loading a Qwen model never imports LLaVA code.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.info import FAMILIES, inspect_model_dir


def adapter_class(family: str) -> type[VLMAdapter]:
    if family not in FAMILIES.values():
        raise ValueError(
            f"unknown model family {family!r}; supported: {', '.join(sorted(FAMILIES.values()))}"
        )
    module = importlib.import_module(f"mbpo_core.models.{family}")
    cls: type[VLMAdapter] = module.ADAPTER
    return cls


def load_adapter(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VLMAdapter:
    """Adapter for the local model directory `path` (validated by `inspect_model_dir`: safetensors
    weights only, no custom code), with model and processor loaded on `device` in `dtype`."""
    info = inspect_model_dir(path)
    return adapter_class(info.family).load(path, device=device, dtype=dtype)
