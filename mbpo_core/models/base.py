"""The one interface every model family implements.

Everything that touches pixels goes through `pixel_inputs`, a differentiable map from [0,1] pixel
tensors to the model's own pixel inputs, tested equal to the Hugging Face processor. Log-probs,
IIG, PGD and generation therefore share one preprocessing path.
Adding a family = adding one file in this package that subclasses `VLMAdapter` and registers it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

# A batch of images as float pixels in [0, 1], shape (B, H, W, 3); all images of a batch share H, W.
Pixels = torch.Tensor


class VLMAdapter(ABC):
    family: ClassVar[str]

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VLMAdapter:
        """Model + processor from a local directory: safetensors only, never remote code."""

    @abstractmethod
    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """Differentiable (B, H, W, 3) in [0,1] -> the model's pixel kwargs (e.g. pixel_values, image_grid_thw)."""

    @abstractmethod
    def prompt_text(self, question: str) -> str:
        """The chat-templated prompt for one image + question, ending where the answer starts."""

    @abstractmethod
    def answer_logprobs(
        self, pixels: Pixels, questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced answer log-probs: (sum over answer tokens (B,), number of answer tokens (B,)).

        Differentiable with respect to `pixels` (PGD uses the gradient)."""

    @abstractmethod
    def generate(
        self,
        pixels: Pixels,
        questions: Sequence[str],
        *,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[str]:
        """Decoded answers (special tokens stripped), one per image."""
