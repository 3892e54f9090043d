"""The one interface every model family implements.

Everything that touches pixels goes through `pixel_inputs`, a differentiable map from [0,1] pixel
tensors to the model's own pixel inputs, tested equal to the Hugging Face processor. Log-probs,
IIG, PGD and generation therefore share one preprocessing path.

A family subclass supplies only what differs between families: its HF model and processor
classes, `pixel_inputs`, `num_image_tokens`, and where needed `image_sequence` (markers around the
image tokens), `text_kwargs` (token types) and `answer_text` (a thinking block). Prompting,
tokenisation, teacher-forced log-probs and generation are shared here. Adding a family = adding
one module in this package that defines `ADAPTER` and its tiny builder (`build.py`), and one line
in `mbpo_core.models.info.FAMILIES` (docs/models.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

# A batch of images as float pixels in [0, 1], shape (B, H, W, 3); all images of a batch share H, W.
Pixels = torch.Tensor

# Submodule names of the vision side across the supported families: the encoder (Qwen `visual`,
# LLaVA / Gemma 3 / InternVL `vision_tower`, Idefics3 / SmolVLM `vision_model`), which
# `train.freeze_vision` freezes, and the projector into the language model. LoRA adapts neither.
VISION_ENCODERS = ("visual", "vision_tower", "vision_model")
VISION_PROJECTORS = ("multi_modal_projector", "connector")


class VLMAdapter(ABC):
    family: ClassVar[str]
    model_class: ClassVar[Any]  # the transformers *ForConditionalGeneration class
    processor_class: ClassVar[Any]  # the transformers processor class (or an image-only subclass)
    # The processor outputs `pixel_inputs` reproduces (what the parity tests compare).
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VLMAdapter:
        """Model + processor from a local directory: safetensors only, never remote code."""
        model = cls.model_class.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
        )
        processor = cls.processor_class.from_pretrained(str(path), local_files_only=True)
        return cls(model.to(device).eval(), processor)

    # ---- family-specific -------------------------------------------------------------------------

    @abstractmethod
    def pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """Differentiable (B, H, W, 3) in [0,1] -> the model's pixel kwargs (pixel_values, ...)."""

    @abstractmethod
    def num_image_tokens(self, height: int, width: int) -> int:
        """How many image placeholder tokens an image of this raw size occupies in the prompt."""

    def image_sequence(self, height: int, width: int) -> str:
        """The prompt text one image placeholder expands to, as the processor expands it. Default:
        `num_image_tokens` copies of the image token; families with begin/end markers or per-tile
        tokens (InternVL, Gemma 3, Idefics3) override it."""
        return self.image_token * self.num_image_tokens(height, width)

    @property
    def stop_token_ids(self) -> list[int]:
        """Where an answer ends: the tokenizer's end token and every id the checkpoint's generation
        config names (Gemma 3 ends turns with `<end_of_turn>`, not its tokenizer's `<eos>`)."""
        ids: list[int] = []
        for value in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None),
        ):
            for token in value if isinstance(value, list | tuple) else [value]:
                if isinstance(token, int) and token not in ids:
                    ids.append(token)
        return ids

    def answer_text(self, decoded: str) -> str:
        """The answer in a decoded completion, as verifiers and users should see it. Default: the
        text itself; reasoning families drop their thinking block (Qwen3-VL Thinking)."""
        return decoded.strip()

    def text_kwargs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra text-side model kwargs derived from the token ids (Qwen: its M-RoPE token types)."""
        return {}

    # ---- shared ----------------------------------------------------------------------------------

    def prompt_text(self, question: str) -> str:
        """The chat-templated prompt for one image + question, ending where the answer starts."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def prompt_ids(self, question: str, height: int, width: int) -> list[int]:
        """Token ids of the prompt with the image placeholder expanded, as the processor expands it."""
        text = self.prompt_text(question).replace(self.image_token, self.image_sequence(height, width))
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens as teacher-forced after the prompt (no end-of-turn token)."""
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def _left_padded(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding puts every sequence's end at the last position: generation needs it, and
        teacher forcing then only has to project the last few hidden states to the vocabulary."""
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, length - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _model_pixel_inputs(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        inputs = self.pixel_inputs(pixels.to(self.device))
        # Pixel values follow the weights' dtype (bf16 on GPU); integer grids stay as they are.
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in inputs.items()}

    def answer_logprobs(
        self, pixels: Pixels, questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced answer log-probs: (sum over answer tokens (B,), number of answer tokens (B,)).

        Float32 sums, differentiable with respect to `pixels` (PGD uses the gradient). An empty
        answer has 0 tokens and log-prob 0.
        """
        if not len(questions) == len(answers) == pixels.shape[0]:
            raise ValueError("pixels, questions and answers must have the same batch size")
        height, width = int(pixels.shape[1]), int(pixels.shape[2])
        answer_tokens = [self.answer_ids(a) for a in answers]
        sequences = [
            self.prompt_ids(q, height, width) + a for q, a in zip(questions, answer_tokens, strict=True)
        ]
        input_ids, attention_mask = self._left_padded(sequences)
        n_answer = max(1, max(len(a) for a in answer_tokens))
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **self.text_kwargs(input_ids),
            **self._model_pixel_inputs(pixels),
            logits_to_keep=n_answer + 1,
            use_cache=False,
        )
        # Logits at position t predict token t+1: the last n_answer+1 logits score the last n_answer tokens.
        logprobs = torch.log_softmax(outputs.logits[:, :-1].float(), dim=-1)
        targets = input_ids[:, -n_answer:]
        token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(a) for a in answer_tokens], device=self.device)
        positions = torch.arange(n_answer, device=self.device)
        is_answer = positions.unsqueeze(0) >= (n_answer - lengths).unsqueeze(1)
        return (token_logprobs * is_answer).sum(-1), lengths

    @torch.no_grad()
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
        """Decoded answers (special tokens stripped, `answer_text` applied), one per image."""
        if len(questions) != pixels.shape[0]:
            raise ValueError("pixels and questions must have the same batch size")
        height, width = int(pixels.shape[1]), int(pixels.shape[2])
        input_ids, attention_mask = self._left_padded([self.prompt_ids(q, height, width) for q in questions])
        sampling: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p)
        else:  # explicit, so a checkpoint's generation_config cannot switch greedy decoding to sampling
            sampling.update(temperature=None, top_p=None, top_k=None)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **self.text_kwargs(input_ids),
            **self._model_pixel_inputs(pixels),
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids,
            **sampling,
        )
        new_tokens = output[:, input_ids.shape[1] :]
        return [
            self.answer_text(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]
