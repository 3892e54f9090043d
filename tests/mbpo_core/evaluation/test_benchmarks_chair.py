"""CHAIR: COCO annotations -> ground-truth objects, the synonym table, CHAIR_s / CHAIR_i / recall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbpo_core.evaluation.benchmarks import chair
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 18, "name": "dog"},
    {"id": 70, "name": "toilet"},
]


def write_coco(root: Path, *, with_captions: bool) -> Path:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (root / "images" / name).write_bytes(b"")
    instances = {
        "images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}],
        "categories": CATEGORIES,
        "annotations": [
            {"image_id": 1, "category_id": 1},
            {"image_id": 1, "category_id": 18},
            {"image_id": 1, "category_id": 18},
            {"image_id": 2, "category_id": 3},
        ],
    }
    (ann / "instances_val2014.json").write_text(json.dumps(instances))
    if with_captions:
        captions = {"annotations": [{"image_id": 2, "caption": "A man standing next to his cars."}]}
        (ann / "captions_val2014.json").write_text(json.dumps(captions))
    return ann


def test_synonym_table_has_the_80_coco_categories() -> None:
    table = chair.synonyms()
    assert len(set(table.values())) == 80
    assert table["puppy"] == "dog" and table["motor bike"] == "motorcycle" and table["sofa"] == "couch"


def test_singular_for_the_vocabulary() -> None:
    assert [chair.singular(w) for w in ("knives", "buses", "puppies", "men", "horses", "skis", "people")] == [
        "knife", "bus", "puppy", "man", "horse", "skis", "people",
    ]  # fmt: skip
    assert chair.singular("glasses") == "glass"  # part of "wine glass"
    assert chair.singular("clouds") == "clouds"  # not a CHAIR word: left alone


def test_caption_objects_applies_the_reference_rules() -> None:
    found = chair.caption_objects("Two men on motor bikes, a baby bird, hot dogs and a toilet seat.")
    assert found == [
        ("man", "person"), ("motor bike", "motorcycle"), ("bird", "bird"), ("hot dog", "hot dog"),
        ("toilet", "toilet"),
    ]  # fmt: skip
    assert chair.caption_objects("A wooden seat.") == [("seat", "chair")]  # no toilet: a seat is a chair
    assert chair.caption_objects("The dog's hot-dog stand") == [("dog", "dog")]  # hyphenated word kept whole


def test_load_and_score_by_hand(tmp_path: Path) -> None:
    ann = write_coco(tmp_path, with_captions=True)
    items = chair.load(ann, tmp_path / "images")
    assert [i.id for i in items] == ["1", "2"]
    assert items[0].prompt == chair.PROMPT
    assert items[0].meta["objects"] == ["dog", "person"]
    assert items[1].meta["objects"] == ["car", "person"]  # "man" from the reference caption
    # image 1: man (ok), puppy (ok), car (hallucinated); image 2: car (ok), toilet (hallucinated)
    tables = chair.score(
        items, ["Two men walk their puppies past a red car.", "A car parked by a toilet seat."]
    )
    m = tables["all"]
    assert m["n"] == 2 and m["mentions"] == 5
    assert m["chair_s"] == 1.0
    assert m["chair_i"] == pytest.approx(2 / 5)
    assert m["recall"] == pytest.approx(3 / 4)  # {person, dog} of 1, {car} of {car, person} of 2


def test_instances_alone_and_captions_from_elsewhere(tmp_path: Path) -> None:
    ann = write_coco(tmp_path, with_captions=False)
    captions = tmp_path / "captions.json"
    captions.write_text(
        json.dumps([{"image_id": 1, "caption": "A dog."}, {"image_id": 2, "caption": "A cat near a car."}])
    )
    m = chair.score_captions(captions, ann / "instances_val2014.json")["all"]
    assert (
        m["chair_s"] == 0.5 and m["chair_i"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(2 / 3)
    )


def test_bad_files_name_the_entry(tmp_path: Path) -> None:
    ann = write_coco(tmp_path, with_captions=False)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps([{"image_id": 1, "caption": "A dog."}, {"image_id": 9, "caption": "x"}]))
    with pytest.raises(BenchmarkDataError, match="image_id 9") as caught:
        chair.score_captions(captions, ann)
    assert caught.value.path == captions and caught.value.entry == 1
    captions.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(BenchmarkDataError, match="caption") as caught:
        chair.load_captions(captions)
    assert caught.value.entry == 0
    instances = ann / "instances_val2014.json"
    coco = json.loads(instances.read_text())
    coco["annotations"].append({"image_id": 1, "category_id": 99})
    instances.write_text(json.dumps(coco))
    with pytest.raises(BenchmarkDataError, match="category_id 99") as caught:
        chair.load(ann, tmp_path / "images")
    assert caught.value.path == instances and caught.value.entry == 4


def test_cli_scores_captions_made_elsewhere(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mbpo_cli.main import app

    ann = write_coco(tmp_path, with_captions=True)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps([{"image_id": 1, "caption": "A dog and a cat."}]))
    args = ["eval", "benchmark", "--name", "chair", "--data", str(ann), "--captions", str(captions)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "chair_s" in result.output and "0.500" in result.output  # chair_i: cat of dog, cat
    captions.write_text(json.dumps([{"image_id": 7, "caption": "A dog."}]))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "image_id 7" in result.output and "entry 0" in result.output
    result = CliRunner().invoke(app, ["eval", "benchmark", "--name", "pope", "--data", str(ann)])
    assert result.exit_code == 2 and "--model" in result.output
