"""Where a model runs and in which dtype, from the config's `device` / `dtype` ("auto" or a name).

"auto" means the first CUDA device in bfloat16 when there is one, else the CPU in float32 (bf16
matmuls on CPU are slow and lose the precision the tests compare against).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[dtype]
