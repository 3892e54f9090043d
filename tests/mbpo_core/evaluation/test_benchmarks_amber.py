"""AMBER: its data/ layout (queries, annotations, word lists) and inference.py's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import amber
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError

ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "frisbee"]},
    {"id": 2, "type": "generative", "truth": ["car"], "hallu": ["bus"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "yes"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 6, "type": "discriminative-relation", "truth": "yes"},
]
RELATION = {
    "dog": ["puppy"], "grass": ["lawn"], "cat": ["kitten"], "frisbee": [], "car": ["vehicle"], "bus": [],
    "tree": [], "sky": [],
}  # fmt: skip


def write_amber(root: Path) -> tuple[Path, Path]:
    data = root / "data"
    (data / "query").mkdir(parents=True)
    images = root / "image"
    images.mkdir()
    for i in range(1, 7):
        (images / f"AMBER_{i}.jpg").write_bytes(b"")
    (data / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (data / "relation.json").write_text(json.dumps(RELATION))
    (data / "safe_words.txt").write_text("sky\n")
    generative = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in (1, 2)]
    discriminative = [{"id": i, "image": f"AMBER_{i}.jpg", "query": f"Question {i}?"} for i in (3, 4, 5, 6)]
    (data / "query" / "query_generative.json").write_text(json.dumps(generative))
    (data / "query" / "query_discriminative.json").write_text(json.dumps(discriminative))
    return data, images


def test_load_reads_both_query_files_with_their_annotations(tmp_path: Path) -> None:
    data, images = write_amber(tmp_path)
    items = amber.load(data, images)
    assert [i.id for i in items] == ["1", "2", "3", "4", "5", "6"]
    assert items[0].prompt == "Describe this image." and items[0].meta["hallu"] == ["cat", "frisbee"]
    assert items[3].meta["type"] == "discriminative-hallucination" and items[3].meta["truth"] == "no"
    only = amber.load(data / "query" / "query_discriminative.json", images)
    assert [i.id for i in only] == ["3", "4", "5", "6"]


def test_generative_metrics_by_hand(tmp_path: Path) -> None:
    data, images = write_amber(tmp_path)
    items = amber.load(data / "query" / "query_generative.json", images)
    # 1: puppies -> dog covered, lawn -> grass covered, kitten -> hallucinated (and cat's hallu
    #    mentioned), sky -> a safe word (counted, never hallucinated); 2: car covered, clean.
    responses = ["Two puppies play on the lawn with a kitten under the sky.", "A red car."]
    g = amber.score(items, responses)["generative"]
    assert g == {"n": 2, "chair": 20.0, "cover": 100.0, "hal": 50.0, "cog": 33.3}


def test_discriminative_metrics_by_hand(tmp_path: Path) -> None:
    data, images = write_amber(tmp_path)
    items = amber.load(data / "query" / "query_discriminative.json", images)
    # 3 yes: right; 4 no: right; 5 no: "Yes" wrong; 6 yes: "No" wrong. "No" is the positive class.
    tables = amber.score(items, ["Yes", "no.", "Yes, it is", "No"])
    f1 = round(2 * 0.5 * 0.5 / (0.5 + 0.5 + 0.0001) * 100, 1)
    assert tables["discriminative"] == {"n": 4, "accuracy": 50.0, "precision": 50.0, "recall": 50.0, "f1": f1}
    assert tables["existence"] == {
        "n": 2,
        "accuracy": 100.0,
        "precision": 100.0,
        "recall": 100.0,
        "f1": 100.0,
    }
    assert tables["attribute"]["accuracy"] == 0.0 and tables["attribute"]["recall"] == 0.0
    assert tables["state"] == tables["attribute"]
    assert tables["relation"]["accuracy"] == 0.0 and tables["relation"]["precision"] == 0.0
    assert "number" not in tables and "generative" not in tables


def test_normalise_keeps_the_reference_strictness_beyond_the_leading_word() -> None:
    assert amber.normalise("YES.") == "Yes" and amber.normalise(" no, there is none") == "No"
    assert amber.normalise("There is no dog") == "There is no dog"  # wrong either way


def test_an_id_without_annotation_names_the_query_file_and_entry(tmp_path: Path) -> None:
    data, images = write_amber(tmp_path)
    query = data / "query" / "query_discriminative.json"
    query.write_text(
        json.dumps(
            [
                {"id": 3, "image": "AMBER_3.jpg", "query": "q"},
                {"id": 99, "image": "AMBER_3.jpg", "query": "q"},
            ]
        )
    )
    with pytest.raises(BenchmarkDataError, match="id 99") as caught:
        amber.load(query, images)
    assert caught.value.path == query and caught.value.entry == 1


def test_missing_word_lists_are_named(tmp_path: Path) -> None:
    data, images = write_amber(tmp_path)
    (data / "safe_words.txt").unlink()
    with pytest.raises(BenchmarkDataError, match=r"safe_words\.txt"):
        amber.load(data, images)
