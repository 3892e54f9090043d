"""Answer a benchmark's items with a model, in batches that mix image sizes, and score the answers.

The adapters take one (B, H, W, 3) pixel tensor per call (`VLMAdapter.generate`), so batching by the
raw image size leaves MME-like sets (every image its own size) at batch size 1. Every family's
`pixel_inputs` of a batch is the per-image outputs concatenated along dim 0 (LLaVA, Gemma 3,
Idefics3/SmolVLM, LLaVA-OneVision: one row or block per image; Qwen: its patches and grid rows;
InternVL: its tiles). So each image is preprocessed once, on its own, at its own size, exactly as
batch size 1 would, and images whose model inputs have the same shape apart from dim 0 (the
*processed* size: every image for Qwen, one per tile count for InternVL, ...) share a batch; each
prompt gets its own image-token count. Results equal batch size 1 up to left padding (tested for
every family).

`evaluate_benchmark` is what a caller (the CLI, later the pipeline's evaluate stage) uses: items in,
answers and metric tables out; `write_predictions` saves the answers as JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from mbpo_core.evaluation.benchmarks import BENCHMARKS
from mbpo_core.evaluation.benchmarks.common import Benchmark, BenchmarkItem, MetricTables, scored_by_judge
from mbpo_core.models.base import VLMAdapter

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class BenchmarkResult:
    answers: list[str]  # one per item, in item order
    metrics: MetricTables


def load_image(path: Path) -> torch.Tensor:
    """(1, H, W, 3) float in [0, 1]."""
    with Image.open(path) as image:
        array = np.array(image.convert("RGB"))  # a writable copy
    return torch.from_numpy(array).float().div(255.0).unsqueeze(0)


@dataclass(frozen=True)
class Prepared:
    """One image preprocessed alone for the model: its raw size and its model pixel inputs."""

    height: int
    width: int
    inputs: dict[str, torch.Tensor]

    @property
    def key(self) -> ShapeKey:
        """What must agree for images to share a batch: every input's shape bar dim 0."""
        return tuple(sorted((k, tuple(v.shape[1:])) for k, v in self.inputs.items()))


@torch.no_grad()
def prepare(adapter: VLMAdapter, pixels: torch.Tensor) -> Prepared:
    """(1, H, W, 3) pixels -> `Prepared`, exactly as batch size 1 preprocesses them."""
    return Prepared(int(pixels.shape[1]), int(pixels.shape[2]), adapter._model_pixel_inputs(pixels))


def prepared_batches(
    adapter: VLMAdapter, items: Sequence[BenchmarkItem], batch_size: int, window: int | None = None
) -> Iterator[list[tuple[int, Prepared]]]:
    """(item index, prepared image) in batches of at most `batch_size` whose inputs concatenate.

    Each image is loaded and preprocessed once. Images wait in groups by `Prepared.key`; a full
    group is a batch at once, and when more than `window` images wait (default 4 batches) the
    largest group goes as it is, so memory stays bounded whatever the mix of sizes."""
    window = window or 4 * batch_size
    pending: dict[ShapeKey, list[tuple[int, Prepared]]] = {}
    waiting = 0
    for index, item in enumerate(items):
        prepared = prepare(adapter, load_image(item.image))
        group = pending.setdefault(prepared.key, [])
        group.append((index, prepared))
        waiting += 1
        if len(group) == batch_size or waiting > window:
            key = prepared.key if len(group) == batch_size else max(pending, key=lambda k: len(pending[k]))
            batch = pending.pop(key)
            waiting -= len(batch)
            yield batch
    yield from pending.values()


def mixed_inputs(
    adapter: VLMAdapter, images: Sequence[Prepared], prompts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Model inputs (left-padded ids, attention mask, text and pixel kwargs) for images of different
    raw sizes whose inputs share their shape bar dim 0: the pixel inputs concatenated, each prompt
    with its own image's token count."""
    pixel_kwargs = {key: torch.cat([image.inputs[key] for image in images]) for key in images[0].inputs}
    sequences = [
        adapter.prompt_ids(prompt, image.height, image.width)
        for prompt, image in zip(prompts, images, strict=True)
    ]
    input_ids, attention_mask = adapter._left_padded(sequences)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **adapter.text_kwargs(input_ids),
        **pixel_kwargs,
    }


@torch.no_grad()
def generate_mixed(
    adapter: VLMAdapter, images: Sequence[Prepared], prompts: Sequence[str], *, max_new_tokens: int
) -> list[str]:
    """Greedy answers for `mixed_inputs`, decoded as `VLMAdapter.generate` decodes them."""
    inputs = mixed_inputs(adapter, images, prompts)
    output = adapter.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        pad_token_id=adapter.tokenizer.pad_token_id,
        eos_token_id=adapter.stop_token_ids,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [
        adapter.answer_text(t) for t in adapter.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    ]


def resolve_benchmark(benchmark: str | Benchmark | ModuleType) -> Any:
    if isinstance(benchmark, str):
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
        return BENCHMARKS[benchmark]
    return benchmark


def generate_answers(
    adapter: VLMAdapter,
    items: Sequence[BenchmarkItem],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """One greedy answer per item, in item order."""
    answers: list[str | None] = [None] * len(items)
    for batch in prepared_batches(adapter, items, batch_size):
        indices = [index for index, _ in batch]
        outputs = generate_mixed(
            adapter,
            [image for _, image in batch],
            [items[i].prompt for i in indices],
            max_new_tokens=max_new_tokens,
        )
        for i, answer in zip(indices, outputs, strict=True):
            answers[i] = answer
        if on_batch is not None:
            on_batch(len(batch))
    return [a if a is not None else "" for a in answers]


def evaluate_benchmark(
    adapter: VLMAdapter,
    benchmark: str | Benchmark | ModuleType,
    items: Sequence[BenchmarkItem],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    score_options: Mapping[str, Any] | None = None,
) -> BenchmarkResult:
    """Answers for `items` (from `benchmark.load`) and the benchmark's metric tables.
    `max_new_tokens` defaults to the benchmark's own (`MAX_NEW_TOKENS`); `score_options` are the
    scorer's keyword arguments (mmhal's `judge`). A benchmark scored by a judge is refused before
    any generation when `score_options` has none."""
    module = resolve_benchmark(benchmark)
    score_options = dict(score_options or {})
    if scored_by_judge(module) and score_options.get("judge") is None:
        raise ValueError(f"{module.NAME} is scored by a judge model; pass score_options={{'judge': ...}}")
    answers = generate_answers(
        adapter,
        items,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or module.MAX_NEW_TOKENS,
        on_batch=on_batch,
    )
    return BenchmarkResult(answers=answers, metrics=module.score(items, answers, **score_options))


def write_predictions(path: Path, items: Sequence[BenchmarkItem], answers: Sequence[str]) -> None:
    """One JSON object a line: id, image, prompt, answer and the item's meta (truth, split, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for item, answer in zip(items, answers, strict=True):
            record = {"id": item.id, "image": str(item.image), "prompt": item.prompt, "answer": answer}
            record.update({k: v for k, v in item.meta.items() if k not in record})
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
