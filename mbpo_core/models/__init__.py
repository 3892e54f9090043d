"""Model families behind one adapter interface (`base.VLMAdapter`), picked from the model's config.

Each family lives in the module named after it in `mbpo_core.model_info.FAMILIES` and exposes
`ADAPTER`; modules are imported on first use, so loading a Qwen model never imports LLaVA code.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from mbpo_core.model_info import FAMILIES, inspect_model_dir
from mbpo_core.models.base import Pixels, VLMAdapter

__all__ = ["Pixels", "VLMAdapter", "adapter_class", "load_adapter"]


def adapter_class(family: str) -> type[VLMAdapter]:
    if family not in FAMILIES.values():
        raise ValueError(
            f"unknown model family {family!r}; supported: {', '.join(sorted(FAMILIES.values()))}"
        )
    module = importlib.import_module(f"{__name__}.{family}")
    cls: type[VLMAdapter] = module.ADAPTER
    return cls


def load_adapter(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VLMAdapter:
    """Adapter for the local model directory `path` (validated by `inspect_model_dir`: safetensors
    weights only, no custom code), with model and processor loaded on `device` in `dtype`."""
    info = inspect_model_dir(path)
    return adapter_class(info.family).load(path, device=device, dtype=dtype)
