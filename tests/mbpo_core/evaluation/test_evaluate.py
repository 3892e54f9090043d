"""Evaluation metrics against hand-computed confusion matrices, balanced subsets, and a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_core.data.manifest import ManifestSample
from mbpo_core.evaluation.evaluate import (
    Confusion,
    SampleResult,
    balanced_subset,
    evaluate_manifest,
    pope_metrics,
    split_metrics,
    yes_no_confusion,
)
from mbpo_core.models.build import build_model, build_processor
from mbpo_core.models.loader import adapter_class


def test_confusion_counts_by_hand() -> None:
    predictions = ["yes", "yes", "no", "no", None, "yes", "no", None]
    truths = ["yes", "no", "no", "yes", "yes", "yes", "no", "no"]
    assert yes_no_confusion(predictions, truths) == Confusion(
        tp=2, fp=1, tn=2, fn=1, unparsable_pos=1, unparsable_neg=1
    )


def test_pope_metrics_by_hand() -> None:
    # 10 samples: 5 positives (3 yes, 1 no, 1 unparsable), 5 negatives (1 yes, 4 no).
    m = pope_metrics(Confusion(tp=3, fp=1, tn=4, fn=1, unparsable_pos=1, unparsable_neg=0))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert m["yes_ratio"] == pytest.approx(4 / 10)
    assert m["false_yes_rate"] == pytest.approx(1 / 5)
    assert m["unparsable_rate"] == pytest.approx(1 / 10)


def test_pope_metrics_always_yes_model() -> None:
    m = pope_metrics(yes_no_confusion(["yes"] * 4, ["yes", "yes", "no", "no"]))
    assert m == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0,
         "false_yes_rate": 1.0, "unparsable_rate": 0.0}
    )  # fmt: skip


def test_pope_metrics_empty_and_never_yes() -> None:
    assert pope_metrics(Confusion())["accuracy"] == 0.0
    never = pope_metrics(yes_no_confusion(["no", "no"], ["yes", "no"]))
    assert never["precision"] == 0.0 and never["f1"] == 0.0 and never["accuracy"] == 0.5


def result(task: str, answer: str, parsed: object, correct: bool, iig: float = 0.0) -> SampleResult:
    return SampleResult(
        id="x", task=task, prediction=str(parsed), answer=answer, correct=correct, parsed=parsed, iig=iig
    )


def test_split_metrics_mixed_tasks_have_no_pope_fields() -> None:
    results = [result("number", "3", 3.0, True, 1.0), result("multiple_choice", "B", None, False, 3.0)]
    m = split_metrics(results)
    assert m == {"n": 2, "accuracy": 0.5, "iig_mean": 2.0, "unparsable_rate": 0.5}


def test_split_metrics_yes_no_includes_pope_fields() -> None:
    m = split_metrics([result("yes_no", "yes", "yes", True), result("yes_no", "no", "yes", False)])
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["yes_ratio"] == 1.0 and m["accuracy"] == 0.5


def sample(i: int, answer: str, task: str = "yes_no") -> ManifestSample:
    return ManifestSample(id=f"s{i}", image=f"images/{i}.png", question="q", answer=answer, task=task)


def test_balanced_subset_keeps_yes_no_balance_and_order() -> None:
    samples = [sample(i, "yes" if i % 4 == 0 else "no") for i in range(40)]  # 10 yes, 30 no
    subset = balanced_subset(samples, 12, seed=1)
    answers = [s.answer for s in subset]
    assert answers.count("yes") == 6 and answers.count("no") == 6
    assert [s.id for s in subset] == sorted((s.id for s in subset), key=lambda x: int(x[1:]))
    assert balanced_subset(samples, 12, seed=1) == subset


def test_balanced_subset_short_side_fills_from_the_other() -> None:
    samples = [sample(0, "yes"), *[sample(i, "no") for i in range(1, 10)]]
    answers = [s.answer for s in balanced_subset(samples, 6)]
    assert answers.count("yes") == 1 and answers.count("no") == 5


def test_balanced_subset_without_limit_and_non_yes_no() -> None:
    samples = [sample(i, str(i), "number") for i in range(10)]
    assert balanced_subset(samples, None) == samples
    assert len(balanced_subset(samples, 4)) == 4


def test_evaluate_manifest_runs_a_real_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    words = ["is", "there", "a", "red", "circle", "yes", "no", "how", "many", "circles"]
    processor = build_processor("qwen2_vl", words, image_size=56)
    adapter = adapter_class("qwen2_vl")(build_model("qwen2_vl", processor, "tiny", seed=0), processor)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(5):
        pixels = np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"images/{i}.png")
        answer = "yes" if i % 2 else "no"
        lines.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "is there a red circle?",
                      "answer": answer, "task": "yes_no"})  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    seen = []
    evaluation = evaluate_manifest(adapter, tmp_path / "manifest.jsonl", batch_size=2, on_batch=seen.append)
    assert sum(seen) == 5 and len(evaluation.results) == 5
    assert evaluation.metrics["n"] == 5
    # A random model never says yes or no: every answer is unparsable and wrong.
    assert evaluation.metrics["accuracy"] == 0.0 and evaluation.metrics["unparsable_rate"] == 1.0
    assert all(np.isfinite(r.iig) for r in evaluation.results)
