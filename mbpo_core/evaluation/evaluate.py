"""Evaluation (docs/method.md §6): POPE-style yes/no probing, close-ended VQA accuracy and mean
IIG, per split.

Metric functions are pure (predictions and truths in, numbers out); `evaluate_manifest` runs a
model over one manifest: batched greedy generation through the adapter, verification of every
answer with `mbpo_core.data.verifiers`, and IIG of the ground-truth answers.

POPE conventions: "yes" is the positive class. An unparsable answer to a yes/no question is wrong
and counts as neither a yes nor a no prediction, so it lowers recall (positive asked) or just
accuracy (negative asked), never precision; `unparsable_rate` reports how often it happened.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mbpo_core.data.manifest import ManifestSample, read_manifest, resolve_image_path
from mbpo_core.data.verifiers import is_correct, parse_answer
from mbpo_core.models.base import VLMAdapter
from mbpo_core.scoring.iig import compute_iig


@dataclass(frozen=True)
class Confusion:
    """Yes/no confusion counts; `unparsable_pos` / `unparsable_neg`: unparsable answers by truth."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    unparsable_pos: int = 0
    unparsable_neg: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.unparsable_pos + self.unparsable_neg


def yes_no_confusion(predictions: Sequence[str | None], truths: Sequence[str]) -> Confusion:
    """Counts from normalised predictions ('yes' / 'no' / None) against truths ('yes' / 'no')."""
    if len(predictions) != len(truths):
        raise ValueError("predictions and truths differ in length")
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "unparsable_pos": 0, "unparsable_neg": 0}
    for pred, truth in zip(predictions, truths, strict=True):
        if truth not in ("yes", "no"):
            raise ValueError(f"yes/no truth expected, got {truth!r}")
        positive = truth == "yes"
        if pred is None:
            counts["unparsable_pos" if positive else "unparsable_neg"] += 1
        elif pred == "yes":
            counts["tp" if positive else "fp"] += 1
        else:
            counts["fn" if positive else "tn"] += 1
    return Confusion(**counts)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(c: Confusion) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio (share of answers that are "yes"), false_yes_rate
    (share of negatives answered "yes"; the hallucination rate) and unparsable_rate. Empty -> zeros."""
    positives = c.tp + c.fn + c.unparsable_pos
    negatives = c.fp + c.tn + c.unparsable_neg
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, positives)
    return {
        "accuracy": _ratio(c.tp + c.tn, c.n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(c.tp + c.fp, c.n),
        "false_yes_rate": _ratio(c.fp, negatives),
        "unparsable_rate": _ratio(c.unparsable_pos + c.unparsable_neg, c.n),
    }


def balanced_subset(
    samples: Sequence[ManifestSample], limit: int | None, seed: int = 0
) -> list[ManifestSample]:
    """At most `limit` samples, chosen by a seeded shuffle. Yes/no samples keep their yes/no balance:
    half the budget goes to each answer (the rest of a short side goes to the other). Manifest order
    is kept, so a subset of a POPE split still pairs each image's positive with its negative."""
    if limit is None or limit >= len(samples):
        return list(samples)
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    groups: dict[str, list[int]] = {}
    for i in order:
        s = samples[i]
        key = str(parse_answer("yes_no", s.answer)) if s.task == "yes_no" else "other"
        groups.setdefault(key, []).append(i)
    if set(groups) - {"other"}:
        yes, no, other = groups.get("yes", []), groups.get("no", []), groups.get("other", [])
        n_yes = min(len(yes), max(limit // 2, limit - len(no) - len(other)))
        n_no = min(len(no), limit - n_yes)
        picked = yes[:n_yes] + no[:n_no] + other[: limit - n_yes - n_no]
    else:
        picked = order[:limit]
    return [samples[i] for i in sorted(picked)]


@dataclass(frozen=True)
class SampleResult:
    id: str
    task: str
    prediction: str
    answer: str
    correct: bool
    parsed: Any  # the normalised prediction, None when unparsable
    iig: float


@dataclass(frozen=True)
class SplitEvaluation:
    metrics: dict[str, float]
    results: list[SampleResult]


def split_metrics(results: Sequence[SampleResult]) -> dict[str, float]:
    """n, accuracy, iig_mean and unparsable_rate always; POPE metrics when every sample is yes/no."""
    n = len(results)
    metrics: dict[str, float] = {
        "n": n,
        "accuracy": _ratio(sum(r.correct for r in results), n),
        "iig_mean": float(np.mean([r.iig for r in results])) if results else 0.0,
        "unparsable_rate": _ratio(sum(r.parsed is None for r in results), n),
    }
    if results and all(r.task == "yes_no" for r in results):
        confusion = yes_no_confusion(
            [r.parsed for r in results], [str(parse_answer("yes_no", r.answer)) for r in results]
        )
        metrics.update(pope_metrics(confusion))
    return metrics


def load_pixels(root: Path, samples: Sequence[ManifestSample]) -> torch.Tensor:
    """(B, H, W, 3) float in [0,1]; every image of the batch must have the same size."""
    arrays = [
        np.asarray(Image.open(resolve_image_path(root, s.image, line=s.line)).convert("RGB")) for s in samples
    ]
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def _size_batches(
    root: Path, samples: Sequence[ManifestSample], batch_size: int
) -> list[list[ManifestSample]]:
    """Batches of samples whose images share a size (the adapter batches one size at a time)."""
    by_size: dict[tuple[int, int], list[ManifestSample]] = {}
    for s in samples:
        with Image.open(resolve_image_path(root, s.image, line=s.line)) as img:
            by_size.setdefault(img.size, []).append(s)
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def evaluate_samples(
    adapter: VLMAdapter,
    root: Path,
    samples: Sequence[ManifestSample],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    null_image: str = "gray",
    tolerance: float = 0.0,
    on_batch: Callable[[int], None] | None = None,
) -> list[SampleResult]:
    """Greedy answers, correctness and ground-truth IIG for every sample (results in input order)."""
    results: dict[str, SampleResult] = {}
    for batch in _size_batches(root, samples, batch_size):
        pixels = load_pixels(root, batch)
        questions = [s.question for s in batch]
        predictions = adapter.generate(pixels, questions, max_new_tokens=max_new_tokens)
        iig = compute_iig(adapter, pixels, questions, [s.answer for s in batch], null_image)
        for s, pred, gain in zip(batch, predictions, iig.tolist(), strict=True):
            choices = s.choices or None
            results[s.id] = SampleResult(
                id=s.id,
                task=s.task,
                prediction=pred,
                answer=s.answer,
                correct=is_correct(s.task, pred, s.answer, choices, tolerance=tolerance),
                parsed=parse_answer(s.task, pred, choices),
                iig=float(gain),
            )
        if on_batch is not None:
            on_batch(len(batch))
    return [results[s.id] for s in samples]


def evaluate_manifest(
    adapter: VLMAdapter,
    manifest: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    null_image: str = "gray",
    on_batch: Callable[[int], None] | None = None,
) -> SplitEvaluation:
    """Score a model on one manifest (optionally a balanced subset of `limit` samples)."""
    path = Path(manifest)
    samples = balanced_subset(read_manifest(path), limit, seed)
    results = evaluate_samples(
        adapter,
        path.parent,
        samples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        null_image=null_image,
        on_batch=on_batch,
    )
    return SplitEvaluation(split_metrics(results), results)
