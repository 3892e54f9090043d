"""POPE: the official question-file format, LMMS-Eval's prompt, POPE's evaluate.py metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError


def write_pope(root: Path, name: str, rows: list[dict]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        if "image" in row:
            (root / "images" / row["image"]).write_bytes(b"")
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(qid: int, label: str, image: str = "COCO_val2014_000000000001.jpg") -> dict:
    return {"question_id": qid, "image": image, "text": " Is there a dog in the image? ", "label": label}


def test_load_builds_lmms_eval_prompts_and_keeps_file_order(tmp_path: Path) -> None:
    path = write_pope(tmp_path, "coco_pope_random.json", [row(1, "yes"), row(2, "no", "b.jpg")])
    items = pope.load(path, tmp_path / "images")
    assert [i.id for i in items] == ["coco_pope_random/1", "coco_pope_random/2"]
    assert (
        items[0].prompt == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    assert items[1].image == (tmp_path / "images" / "b.jpg").resolve()
    assert dict(items[1].meta) == {"split": "coco_pope_random", "question_id": 2, "label": "no"}


def test_official_answer_rule() -> None:
    # POPE's evaluate.py: first sentence, commas dropped, split on spaces; no / No / not -> "no".
    assert pope.official_answer("No, there is not.") == "no"
    assert pope.official_answer("There is no dog") == "no"
    assert pope.official_answer("Yes. But not a big one.") == "yes"  # only the first sentence counts
    assert pope.official_answer("I think so") == "yes"  # neither yes nor no counts as yes
    assert pope.official_answer("NO") == "yes"  # the script's words are case-sensitive
    assert pope.official_answer("Nope") == "yes"


def test_metrics_by_hand(tmp_path: Path) -> None:
    path = write_pope(tmp_path, "random.json", [row(1, "yes"), row(2, "yes"), row(3, "no"), row(4, "no")])
    items = pope.load(path, tmp_path / "images")
    # predictions (official rule): yes, no, yes, yes -> TP 1, FN 1, FP 2, TN 0
    tables = pope.score(items, ["Yes", "No, there is not.", "yes.", "I think so"])
    m = tables["random"]
    assert list(tables) == ["random"]
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(0.4)
    assert m["yes_ratio"] == pytest.approx(3 / 4)
    assert m["non_yes_no"] == pytest.approx(2 / 4)


def test_a_directory_is_one_split_per_file_plus_all(tmp_path: Path) -> None:
    write_pope(tmp_path, "coco_pope_popular.json", [row(1, "yes"), row(2, "no")])
    write_pope(tmp_path, "coco_pope_adversarial.json", [row(1, "no")])
    items = pope.load(tmp_path, tmp_path / "images")
    tables = pope.score(items, ["no", "yes", "yes"])  # files sorted: adversarial first
    assert list(tables) == ["coco_pope_adversarial", "coco_pope_popular", "all"]
    assert tables["coco_pope_adversarial"]["accuracy"] == 1.0
    assert tables["coco_pope_popular"]["accuracy"] == 0.5
    assert tables["all"]["accuracy"] == pytest.approx(2 / 3)
    assert tables["all"]["yes_ratio"] == pytest.approx(2 / 3)


def test_a_line_with_a_missing_field_names_the_file_and_line(tmp_path: Path) -> None:
    broken = row(2, "no")
    del broken["label"]
    path = write_pope(tmp_path, "random.json", [row(1, "yes"), broken])
    with pytest.raises(BenchmarkDataError, match="label") as caught:
        pope.load(path, tmp_path / "images")
    assert caught.value.path == path and caught.value.line == 2
    assert f"{path}, line 2" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_label_missing_image_and_invalid_json_name_the_line(tmp_path: Path) -> None:
    path = write_pope(tmp_path, "a.json", [row(1, "maybe")])
    with pytest.raises(BenchmarkDataError, match="yes or no") as caught:
        pope.load(path, tmp_path / "images")
    assert caught.value.line == 1
    path.write_text(
        json.dumps(row(1, "yes")) + "\n" + json.dumps({**row(2, "no"), "image": "gone.jpg"}) + "\n"
    )
    with pytest.raises(BenchmarkDataError, match=r"gone\.jpg") as caught:
        pope.load(path, tmp_path / "images")
    assert caught.value.line == 2
    path.write_text("{not json\n")
    with pytest.raises(BenchmarkDataError, match="invalid JSON") as caught:
        pope.load(path, tmp_path / "images")
    assert caught.value.line == 1
    with pytest.raises(BenchmarkDataError, match="--images"):
        pope.load(path, None)
