"""Supervised training of the testbed's base VLM from scratch on the biased `sft` split (CPU).

Two things make a from-scratch VLM this small trainable in minutes:

- An auxiliary object-presence head on the pooled vision features. Trained on answers alone, the
  model first learns the text-only answer ("yes" to every existence question) and sits on that
  plateau for a long time, because the gradient reaching the vision tower is orders of magnitude
  smaller than the language model's. A direct multi-label loss "which kinds are in the image"
  gives the vision tower its own signal. The head is dropped before saving: the saved model is a
  plain Hugging Face Qwen2-VL.
- Stuck-run detection: some initialisations stay on the plateau anyway. If the existence-answer
  loss has not left it by `stuck_check_step`, training restarts from a fresh initialisation (seed
  derived from the base seed and the attempt number, so the whole build stays deterministic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from mbpo_core.manifest import ManifestSample, read_manifest
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.build import build_model
from mbpo_core.models.qwen2_vl import Qwen2VLAdapter
from mbpo_core.testbed.scenes import ALL_KINDS

KIND_INDEX = {k.name: i for i, k in enumerate(ALL_KINDS)}
IGNORE = -100


@dataclass(frozen=True)
class BaseTrainConfig:
    """How the base model is trained. Defaults: the full build (about 10 minutes on 2 cores)."""

    seed: int = 0
    # Overrides of the models helper's "tiny" Qwen2-VL preset (see mbpo_core.models.build.build_model).
    size: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128,
            "v_dim": 64, "v_depth": 2, "v_heads": 4,
        }
    )  # fmt: skip
    steps: int = 2500
    images_per_batch: int = 16  # each with all its questions (5 in the sft split): ~80 sequences
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    # By this step the existence-answer loss must be below `stuck_loss` (ln 2 = 0.69 is a coin flip).
    stuck_check_step: int = 800
    stuck_loss: float = 0.5
    max_attempts: int = 4
    num_threads: int = 2
    log_every: int = 50


@dataclass
class TrainReport:
    attempts: int = 0
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    final_yes_no_loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)


class StuckRunError(RuntimeError):
    """The run is still on the text-only plateau at the check step."""


def encode_sample(adapter: VLMAdapter, question: str, answer: str, image_size: int) -> tuple[list[int], int]:
    """Prompt + answer + end-of-turn token ids, exactly as the adapter builds prompts at inference,
    and the index of the first answer token."""
    prompt = adapter.prompt_ids(question, image_size, image_size)
    answer_ids = [*adapter.answer_ids(answer), adapter.tokenizer.eos_token_id]
    return prompt + answer_ids, len(prompt)


def collate_texts(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask and labels (IGNORE outside the answer)."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    for row, (ids, answer_start) in enumerate(encoded):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        attention[row, :n] = 1
        labels[row, answer_start:n] = input_ids[row, answer_start:n]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def presence_targets(object_lists: Sequence[Sequence[str]]) -> torch.Tensor:
    """(B, n_kinds) multi-hot of the kinds drawn in each image (the manifest's `objects`)."""
    targets = torch.zeros((len(object_lists), len(ALL_KINDS)))
    for row, names in enumerate(object_lists):
        for name in names:
            targets[row, KIND_INDEX[name]] = 1.0
    return targets


class PresenceHead(nn.Module):
    """Object-presence logits (B, n_kinds) from the mean of the image tokens (B, N, D), two ways:

    - a linear probe, which makes the pooled features encode presence linearly;
    - a grounding score <pooled features, E[colour] + E[shape]> with E the language model's own
      word embeddings, which lines image features up with the words a question uses for the kind.
    The mean is what the language model sees first: its attention starts out nearly uniform."""

    def __init__(self, hidden: int, kind_token_ids: torch.Tensor) -> None:
        super().__init__()
        self.kind_token_ids = kind_token_ids  # (n_kinds, 2): the colour and the shape word's token
        self.linear = nn.Linear(hidden, len(kind_token_ids))
        self.scale = nn.Parameter(torch.tensor(1.0 / hidden**0.5))
        self.bias = nn.Parameter(torch.zeros(len(kind_token_ids)))

    def forward(
        self, image_tokens: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = image_tokens.mean(1)
        kinds = embeddings[self.kind_token_ids].sum(1)  # (n_kinds, D)
        return self.linear(pooled), self.scale * pooled @ kinds.T + self.bias


def answer_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over answer tokens: (mean over all answer tokens, per-sample loss of
    the first answer token (B,)) - the latter is what the plateau shows in."""
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    token_loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shifted_labels.shape)
    mask = shifted_labels != IGNORE
    first = mask.float().argmax(dim=1)
    first_loss = token_loss.gather(1, first[:, None]).squeeze(1)
    return token_loss.sum() / mask.sum().clamp(min=1), first_loss


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def attempt_seed(seed: int, attempt: int) -> int:
    return seed * 1009 + attempt


@dataclass(frozen=True)
class TrainingData:
    """The sft split in memory, grouped by image: images decoded once, texts tokenised once.

    Training batches are groups of images with all their questions, so the vision tower (the
    expensive part on CPU) runs once per image however many questions ask about it."""

    images: torch.Tensor  # (N_images, H, W, 3) uint8
    presence: torch.Tensor  # (N_images, n_kinds) multi-hot of the kinds in each image
    questions: list[list[tuple[list[int], int]]]  # per image: (token ids, first answer index) per question
    yes_no: list[list[bool]]  # per image, per question: is it an existence question

    @classmethod
    def load(cls, manifest: Path, adapter: VLMAdapter) -> TrainingData:
        by_image: dict[str, list[ManifestSample]] = {}
        for sample in read_manifest(manifest):
            by_image.setdefault(sample.image, []).append(sample)
        arrays = [np.asarray(Image.open(manifest.parent / ref).convert("RGB")) for ref in by_image]
        images = torch.from_numpy(np.stack(arrays))
        if images.shape[1] != images.shape[2]:
            raise ValueError("the testbed trains on square images of one size")
        cache: dict[tuple[str, str], tuple[list[int], int]] = {}
        for group in by_image.values():
            for s in group:
                if (s.question, s.answer) not in cache:
                    cache[(s.question, s.answer)] = encode_sample(
                        adapter, s.question, s.answer, images.shape[1]
                    )
        return cls(
            images=images,
            presence=presence_targets([group[0].meta.get("objects", []) for group in by_image.values()]),
            questions=[[cache[(s.question, s.answer)] for s in group] for group in by_image.values()],
            yes_no=[[s.task == "yes_no" for s in group] for group in by_image.values()],
        )


def _image_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of image indices (reshuffled every epoch; the tail is dropped)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def _train_once(
    data: TrainingData,
    processor: Any,
    cfg: BaseTrainConfig,
    attempt: int,
    report: TrainReport,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> Any:
    seed = attempt_seed(cfg.seed, attempt)
    adapter = Qwen2VLAdapter(build_model("qwen2_vl", processor, cfg.size, seed=seed).train(), processor)
    model = adapter.model
    kind_token_ids = torch.tensor(
        [adapter.tokenizer.convert_tokens_to_ids([k.colour, k.shape]) for k in ALL_KINDS], dtype=torch.long
    )
    head = PresenceHead(model.config.text_config.hidden_size, kind_token_ids)
    embeddings = model.get_input_embeddings().weight
    params = [*model.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_with_warmup(cfg.warmup_steps, cfg.steps))
    batches = _image_batches(len(data.images), cfg.images_per_batch, torch.Generator().manual_seed(seed))
    ema_yes_no = math.log(2)
    for step in range(cfg.steps):
        idx = next(batches).tolist()
        vision_inputs = adapter.pixel_inputs(data.images[idx].float() / 255.0)
        vision = model.get_image_features(**vision_inputs, return_dict=True)
        image_tokens = torch.stack(list(vision.pooler_output))  # (images, tokens, hidden)
        probe_logits, grounding_logits = head(image_tokens, embeddings)
        aux_loss = F.binary_cross_entropy_with_logits(
            probe_logits, data.presence[idx]
        ) + F.binary_cross_entropy_with_logits(grounding_logits, data.presence[idx])
        # Each question of an image gets that image's features (the model scatters them in order).
        owner = [row for row, i in enumerate(idx) for _ in data.questions[i]]
        texts = collate_texts([q for i in idx for q in data.questions[i]], adapter.tokenizer.pad_token_id)
        vision.pooler_output = tuple(image_tokens[owner])
        out = model(
            input_ids=texts["input_ids"],
            attention_mask=texts["attention_mask"],
            image_grid_thw=vision_inputs["image_grid_thw"][owner],
            mm_encoder_outputs={"image": vision},
            **adapter.text_kwargs(texts["input_ids"]),
        )
        answer_loss, first_loss = answer_losses(out.logits, texts["labels"])
        optimiser.zero_grad(set_to_none=True)
        (answer_loss + cfg.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        yes_no = torch.tensor([flag for i in idx for flag in data.yes_no[i]])
        if yes_no.any():
            ema_yes_no = 0.95 * ema_yes_no + 0.05 * float(first_loss.detach()[yes_no].mean())
        metrics = {"loss": answer_loss.item(), "aux_loss": aux_loss.item(), "yes_no_loss": ema_yes_no}
        if on_step is not None:
            on_step(step, metrics)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            report.history.append({"attempt": attempt, "step": step, **metrics})
        if step + 1 == cfg.stuck_check_step and ema_yes_no > cfg.stuck_loss:
            raise StuckRunError(f"attempt {attempt}: yes/no loss {ema_yes_no:.3f} at step {step + 1}")
        report.final_loss, report.final_yes_no_loss = metrics["loss"], ema_yes_no
    report.steps = cfg.steps
    return model.eval()


def train_base_model(
    manifest: str | Path,
    processor: Any,
    cfg: BaseTrainConfig,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> tuple[Any, TrainReport]:
    """Train a fresh Qwen2-VL on the `sft` manifest; restart stuck runs. Returns (model, report).

    The model is a plain Hugging Face `Qwen2VLForConditionalGeneration` (the presence head is not
    part of it). Raises StuckRunError if every attempt stays on the plateau."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    report = TrainReport()
    start = time.perf_counter()
    try:
        # Tokenising needs only the processor; the adapter wraps a throwaway tiny model for it.
        data = TrainingData.load(
            Path(manifest), Qwen2VLAdapter(build_model("qwen2_vl", processor), processor)
        )
        for attempt in range(cfg.max_attempts):
            report.attempts = attempt + 1
            try:
                model = _train_once(data, processor, cfg, attempt, report, on_step)
            except StuckRunError as stuck:
                if on_restart is not None:
                    on_restart(str(stuck))
                if attempt + 1 == cfg.max_attempts:
                    raise
                continue
            report.seconds = time.perf_counter() - start
            return model, report
    finally:
        torch.set_num_threads(previous_threads)
    raise AssertionError("unreachable: the loop returns or raises")
